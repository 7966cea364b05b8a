"""SFT: data preparation (chat template, assistant-only mask, counted cuts), Ray Train + TRL runs on SmolLM2
(loss drops, weights change, a killed worker resumes from its checkpoint), and the saved model in eval/steering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skillray.config import SFTConfig
from skillray.sft.data import SFTDataError, chat_ids_and_mask, read_train_lines, tokenize_lines


@pytest.fixture(scope="module")
def tok(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2.path)


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mask_covers_assistant_turns_only(tok):
    msgs = [{"role": "user", "content": "What is 7+5?"}, {"role": "assistant", "content": "It is 12."},
            {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4"}]  # fmt: skip
    ids, mask = chat_ids_and_mask(msgs, tok)
    assert ids == list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    # both answers and their end-of-turn tokens, nothing of the system/user turns or role headers
    assert trained == "It is 12.<|im_end|>\n4<|im_end|>\n"
    assert "What is" not in trained and "assistant" not in trained


def test_cuts_and_drops_are_counted(tok, tmp_path):
    long_answer = " ".join(["seven"] * 200)
    p = _write_jsonl(tmp_path / "t.jsonl", [_chat("Q1?", "short"), _chat("Q2?", long_answer),
                                            {"messages": [{"role": "user", "content": "no answer"}]},
                                            {"text": "plain text line"}])  # fmt: skip
    lines = read_train_lines(p)
    data = tokenize_lines(lines, tok, max_seq_len=64)
    s = data.stats()
    assert (s["lines"], s["examples_used"], s["examples_truncated"], s["dropped_no_assistant_turn"]) == (4, 3, 1, 1)
    assert s["tokens_cut"] > 100 and max(len(x) for x in data.input_ids) == 64
    assert all(len(a) == len(b) for a, b in zip(data.input_ids, data.assistant_masks))
    # a cut that leaves no assistant token drops the example (counted); nothing left is an error
    prompt = tok.apply_chat_template(lines[1]["messages"][:1], tokenize=True, add_generation_prompt=True)["input_ids"]
    data = tokenize_lines([lines[1], lines[3]], tok, max_seq_len=len(prompt))
    assert (data.stats()["dropped_no_loss_token_after_cut"], data.examples) == (1, 1)
    with pytest.raises(SFTDataError, match=r"no example left to train on"):
        tokenize_lines(lines[:2], tok, max_seq_len=8)


def test_bad_lines_are_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_chat("a", "b")) + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(SFTDataError, match=r"bad.jsonl line 2: messages\[0\]"):
        read_train_lines(p)
    with pytest.raises(SFTDataError, match=r"budget 5 asks for more lines than the file's 1"):
        read_train_lines(_write_jsonl(tmp_path / "one.jsonl", [_chat("a", "b")]), budget=5)


def test_selection_must_exist(tmp_path):
    from skillray.config import ModelConfig
    from skillray.sft import run_sft

    with pytest.raises(ValueError, match=r"sft.selection is not set"):
        run_sft(tmp_path, SFTConfig(), ModelConfig())
    with pytest.raises(FileNotFoundError, match=r"sft.selection='nope': no finished selection"):
        run_sft(tmp_path, SFTConfig(selection="nope"), ModelConfig())


# ----------------------------------------------------------------------------- Ray Train + TRL on SmolLM2

KILL_STEP, MAX_STEPS, SAVE_STEPS = 3, 3, 2


def _arithmetic(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i + 3, 2 * i + 1
        rows.append(_chat(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. The answer is {a + b}."))
    return rows


@pytest.fixture(scope="module")
def killed_run(ray_cluster, smollm2, tmp_path_factory):
    """2 workers x 1 CPU, LoRA, 3 steps; rank 1 SIGKILLs itself at the end of step 3 of the first attempt (marker
    file), after the step-2 checkpoint: Ray Train restarts the group, which resumes from that checkpoint."""
    import time

    from skillray.config import ModelConfig
    from skillray.sft import run_sft

    root = tmp_path_factory.mktemp("sft")
    train = _write_jsonl(root / "data" / "train.jsonl", _arithmetic(16))
    cfg = SFTConfig(method="lora", num_workers=2, cpus_per_worker=1, per_device_batch_size=2, max_seq_len=128,
                    max_steps=MAX_STEPS, save_steps=SAVE_STEPS, learning_rate=1e-3, lr_scheduler="constant",
                    warmup_ratio=0.0, max_failures=1)  # fmt: skip
    marker = root / "killed.txt"
    seen = []
    t0 = time.perf_counter()
    m = run_sft(root / "run", cfg, ModelConfig(name_or_path=smollm2.path), train_path=train, out_dir=root / "out",
                progress=lambda done, total: seen.append((done, total)),
                _fault={"step": KILL_STEP, "rank": 1, "marker": str(marker)})  # fmt: skip
    return {"manifest": m, "root": root, "cfg": cfg, "train": train, "marker": marker, "progress": seen,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def test_sft_lowers_loss_and_changes_weights(killed_run, smollm2):
    from safetensors import safe_open

    s = killed_run["manifest"].summary
    assert s["examples_used"] == 16 and s["examples_truncated"] == 0 and s["examples_dropped"] == 0
    assert s["train_loss_last"] < 0.5 * s["train_loss_first"], s
    from skillray.models import choose_dtype

    auto = choose_dtype("auto", "cpu")  # bf16 autocast over float32 weights where the CPU has bf16 instructions
    assert s["dtype"] == f"weights float32, bf16 autocast {'on' if auto.name == 'bfloat16' else 'off'} ({auto.reason})"
    assert killed_run["manifest"].config["sft"]["bf16"] == (auto.name == "bfloat16")
    out = Path(s["model"])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()  # merged: a plain model
    with safe_open(str(out / "model.safetensors"), "pt") as new, \
            safe_open(str(Path(smollm2.path) / "model.safetensors"), "pt") as old:  # fmt: skip
        q = "model.layers.3.self_attn.q_proj.weight"
        assert set(new.keys()) == set(old.keys())
        assert (new.get_tensor(q) - old.get_tensor(q)).abs().max() > 1e-4  # the merged adapter moved q_proj
        emb = "model.embed_tokens.weight"
        assert (new.get_tensor(emb) == old.get_tensor(emb)).all()  # LoRA leaves the embeddings alone


def test_killed_worker_resumes_from_checkpoint(killed_run):
    m, root = killed_run["manifest"], killed_run["root"]
    assert "killed rank 1 at step 3" in killed_run["marker"].read_text()  # the first attempt really died
    assert m.summary["resumed_from_step"] == SAVE_STEPS  # the second attempt started from checkpoint 2
    assert m.summary["steps"] == m.summary["planned_steps"] == MAX_STEPS
    log = json.loads((root / "out" / "train_log.json").read_text())["log_history"]
    assert [h["step"] for h in log if "loss" in h] == [1, 2, 3]  # 1-2 from the checkpoint, 3 redone once
    ckpts = sorted(p.name for p in (root / "out" / "checkpoints" / m.summary["name"]).glob("step-*"))
    assert ckpts == ["step-0000002", "step-0000003"]  # every save_steps, and at the end (the HF Trainer's rule)
    assert killed_run["progress"][-1] == (MAX_STEPS, MAX_STEPS)


def test_rerun_skips_and_other_settings_are_refused(killed_run):
    from skillray.artifacts import StageMismatchError
    from skillray.config import ModelConfig
    from skillray.sft import run_sft

    root, cfg = killed_run["root"], killed_run["cfg"]
    model = ModelConfig(name_or_path=killed_run["manifest"].config["model"]["name_or_path"])
    again = run_sft(root / "run", cfg, model, train_path=killed_run["train"], out_dir=root / "out")
    assert again.created == killed_run["manifest"].created
    with pytest.raises(StageMismatchError, match=r"learning_rate"):
        run_sft(root / "run", cfg.model_copy(update={"learning_rate": 1e-4}), model, train_path=killed_run["train"],
                out_dir=root / "out")  # fmt: skip


def test_saved_model_loads_in_eval_and_steering(killed_run, ray_cluster):
    import numpy as np
    import torch

    from skillray.config import EvalBenchmark, EvalConfig, ModelConfig
    from skillray.eval import run_eval
    from skillray.models import load_model, load_tokenizer, resolve_model
    from skillray.steer import SteeringVector, steer

    out = Path(killed_run["manifest"].summary["model"])
    mcfg = ModelConfig(name_or_path=str(out))
    ev = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=2)],
                    n_samples=1, temperature=0.0, max_new_tokens=4, chunk_size=2, n_bootstrap=10,
                    num_actors=0)  # in-process: the actor path is test_eval's  # fmt: skip
    m = run_eval(killed_run["root"] / "run", ev, mcfg, out_dir=out.parent / "eval")
    assert m.complete and m.summary["samples"] == 2 and m.inputs["model"].startswith("local:")

    resolved = resolve_model(mcfg)
    model, tok = load_model(resolved, torch.float32), load_tokenizer(resolved)
    ids = tok("What is 2 + 2?", return_tensors="pt").input_ids
    vec = SteeringVector(layers=(2,), vectors=np.full((1, model.config.hidden_size), 4.0, np.float32))
    with torch.no_grad():
        plain = model(ids).logits
        with steer(model, vec):
            steered = model(ids).logits
    assert (steered - plain).abs().max() > 1e-2


def test_cli_defaults_to_the_runs_selection():
    from skillray.sft import sft_config_for_run
    from skillray.config import RunConfig, SelectConfig

    run = RunConfig(select=SelectConfig(strategy="coverage", budget=50))
    assert sft_config_for_run(run).selection == "coverage-s0-n50"
    run = run.model_copy(update={"sft": SFTConfig(selection="mine")})
    assert sft_config_for_run(run).selection == "mine"
