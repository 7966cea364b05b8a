"""`skillray plan`: per-stage cost and checks from the model's shape and the config, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from skillray.config import load_config
from skillray.plan import PROMPT_TOKENS, model_shape, plan

ROOT = Path(__file__).resolve().parents[1]


def test_shape_counts_the_real_checkpoints_parameters(smollm2):
    """The parameter count from the config's shape equals the tensors of the real SmolLM2 checkpoint (up to the
    norm weights, which the FLOP rule leaves out)."""
    from safetensors import safe_open

    from skillray.config import ModelConfig

    n = 0
    for f in Path(smollm2.path).glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n += int(__import__("math").prod(shape))
    shape = model_shape(ModelConfig())
    assert shape.n_layers == 30 and shape.hidden == 576 and shape.tied_embeddings
    assert abs(shape.params - n) / n < 1e-3, (shape.params, n)


def test_the_papers_recipe_on_8_gpus():
    cfg = load_config(ROOT / "configs" / "nemotron_llama3_8b.yaml")
    res = plan(cfg, gpus=8, gpu_memory_gb=80)
    assert abs(res["model"]["params"] - 8.03e9) / 8.03e9 < 0.01  # Llama-3-8B
    st = {s["stage"]: s for s in res["stages"]}
    assert abs(st["extract"]["disk_bytes"] - 50_000 * 30 * 4096 * 4) < 1e6  # the 24.6 GB store of 122,880 dims
    # extract: 2 x params x 50k x 8192 tokens at most
    assert st["extract"]["flops"] == pytest.approx(2 * res["model"]["params"] * 50_000 * 8192)
    # FSDP over 8 GPUs: 16 bytes per parameter / 8 plus activations fits 80 GB ...
    assert st["sft"]["memory_per_gpu_bytes"] < 80e9 and not any(c.startswith("sft") for c in res["checks"])
    # ... and the recipe's new tokens leave room for a prompt in Llama-3's 8192-token context, while 8k do not
    assert res["checks"] == [] and res["fits"]
    long = cfg.model_copy(update={"ablate": cfg.ablate.model_copy(update={"eval": cfg.ablate.eval.model_copy(
        update={"max_new_tokens": 8192})})})  # fmt: skip
    bad = plan(long, gpus=8, gpu_memory_gb=80)
    assert any("ablate.eval.max_new_tokens" in c for c in bad["checks"]) and not bad["fits"]
    assert res["wall_hours"] == pytest.approx(sum(s["wall_hours"] for s in st.values()))
    # eval_together (the default) keeps all 20 cells' bf16 models until the evals: 19 more than one at a time
    assert cfg.ablate.eval_together and not cfg.ablate.keep_models
    one_by_one = cfg.model_copy(update={"ablate": cfg.ablate.model_copy(update={"eval_together": False})})
    st1 = {s["stage"]: s for s in plan(one_by_one, gpus=8, gpu_memory_gb=80)["stages"]}
    extra = st["ablate: sft"]["disk_bytes"] - st1["ablate: sft"]["disk_bytes"]
    assert extra == pytest.approx(19 * 2 * res["model"]["params"]) and "all 20 models" in st["ablate: sft"]["note"]
    # the same SFT without FSDP on one GPU does not fit, and the check says what to do
    one = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"fsdp": None, "num_workers": 1})})
    res1 = plan(one, gpus=1, gpu_memory_gb=80)
    assert any(c.startswith("sft:") and "fsdp" in c for c in res1["checks"])


def test_cli_prints_the_table_and_fails_on_a_failed_check(tmp_path):
    from skillray.cli.main import app

    out = CliRunner().invoke(app, ["plan", str(ROOT / "configs" / "demo.yaml"), "--gpus", "1", "--out",
                                   str(tmp_path / "plan.json")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "| extract |" in out.output and "Checks: all pass." in out.output and (tmp_path / "plan.json").is_file()
    # past SmolLM2's 8192-token context, through the same --set override every command takes
    out = CliRunner().invoke(app, ["plan", str(ROOT / "configs" / "demo.yaml"), "--gpus", "1", "--set",
                                   "eval.max_new_tokens=9000"])  # fmt: skip
    assert out.exit_code == 1 and "lower eval.max_new_tokens to <= 7936" in out.output, out.output


def _run_with_lengths(tmp_path, ray_cluster, tiny_model):
    """A tiny real run: a finished corpus of records of different lengths, a real extract stage (its per-record
    token counts) and a real random selection named as an ablation named `ab` names its selections."""
    from skillray.config import ExtractConfig, ModelConfig, SelectConfig
    from skillray.corpus.records import Record
    from skillray.extract import run_extract
    from skillray.select import run_select
    from tests.conftest import write_corpus_to

    recs = [Record(id=f"r{i}", messages=({"role": "user", "content": "Add " + " and ".join(map(str, range(i + 1)))},
                                         {"role": "assistant", "content": "The sum is " + "+".join(["1"] * (3 * i + 1))}))
            for i in range(10)]  # fmt: skip
    run = write_corpus_to(recs, tmp_path / "run")
    model = ModelConfig(name_or_path=tiny_model.path)
    run_extract(run, model, ExtractConfig(max_tokens=96, shard_size=4, token_budget=256, num_actors=1, num_cpus_per_actor=1))
    run_select(run, SelectConfig(name="ab-random-s0-n6", strategy="random", budget=6, seed=0))
    return run, recs, model


def test_plan_costs_what_the_run_measured_and_what_the_options_assume(tmp_path, ray_cluster, tiny_model):
    from skillray.config import AblateConfig, CorpusConfig, EvalBenchmark, EvalConfig, ExtractConfig, RunConfig, SFTConfig
    from skillray.config import SelectConfig
    from skillray.extract.tokenize import tokenize_records
    from skillray.models import load_tokenizer

    run, recs, model = _run_with_lengths(tmp_path, ray_cluster, tiny_model)
    # the ground truth: the records tokenized here, cut at the extract's 96 tokens
    lengths = dict(zip([r.id for r in recs], tokenize_records(recs, load_tokenizer(tiny_model), 96).lengths.tolist()))
    assert len(set(lengths.values())) > 3  # the records differ in length
    ids = json.loads((run / "select" / "ab-random-s0-n6" / "ids.json").read_text())
    cap = 64  # sft.max_seq_len, below some records' lengths
    sft = SFTConfig(method="full", max_seq_len=cap, per_device_batch_size=1, num_workers=1)
    ev = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=3)],
                    n_samples=2, max_new_tokens=16)  # fmt: skip
    cfg = RunConfig(run_dir=str(run), model=model, corpus=CorpusConfig(source="hub", path="org/corpus", limit=50, fields={"messages": "messages"}),
                    extract=ExtractConfig(max_tokens=96), sft=sft, eval=ev,
                    ablate=AblateConfig(name="ab", strategies=[SelectConfig(strategy="random")], budgets=[3, 6], seeds=[0]))  # fmt: skip
    res = plan(cfg, gpus=1, gpu_memory_gb=80)
    st = {s["stage"]: s for s in res["stages"]}
    mean = sum(lengths.values()) / len(lengths)  # and 10 records, not the corpus.limit of 50: the run has them
    assert res["records"] == 10 and res["assumptions"]["mean_tokens"] == pytest.approx(mean)
    assert res["assumptions"]["mean_tokens_source"].startswith("measured by the extract stage")
    # extract: worst case at extract.max_tokens per record, expected at the measured mean
    assert st["extract"]["flops"] == pytest.approx(2 * res["model"]["params"] * 10 * 96)
    assert st["extract"]["expected_flops"] / st["extract"]["flops"] == pytest.approx(mean / 96)
    # the grid's fine-tunings: the first 3 and all 6 ids of the selection, each cut at sft.max_seq_len
    m3, m6 = (sum(min(lengths[i], cap) for i in ids[:b]) / b for b in (3, 6))
    ratio = (3 * m3 + 6 * m6) / (3 * cap + 6 * cap)
    assert st["ablate: sft"]["expected_flops"] / st["ablate: sft"]["flops"] == pytest.approx(ratio)
    assert any("first 3 ids of 1 selection(s) ab-*" in n for n in res["notes"])
    assert any("per_device_batch_size 1" in n and "no padding" in n for n in res["notes"])
    # nothing generated yet: eval is expected at its worst, and says so
    assert st["eval"]["expected_flops"] == st["eval"]["flops"]
    assert res["assumptions"]["new_tokens_source"].startswith("worst case")
    assert res["expected_wall_hours"] < res["wall_hours"] and res["expected_fits_deadline"]

    # micro-batches of 2 pad to their longest: the measured expectation counts the padding
    padded = plan(cfg.model_copy(update={"ablate": cfg.ablate.model_copy(update={"sft": sft.model_copy(
        update={"per_device_batch_size": 2})})}), gpus=1, gpu_memory_gb=80)  # fmt: skip
    pst = {s["stage"]: s for s in padded["stages"]}
    assert pst["ablate: sft"]["expected_flops"] > st["ablate: sft"]["expected_flops"]
    assert any("padding of micro-batches of 2 included" in n for n in padded["notes"])

    # assumptions take precedence over the measurement, and are printed as such
    res2 = plan(cfg, gpus=1, gpu_memory_gb=80, mean_tokens=10, mean_new_tokens=5, deadline_hours=1e-9)
    st2 = {s["stage"]: s for s in res2["stages"]}
    assert st2["extract"]["expected_flops"] / st2["extract"]["flops"] == pytest.approx(10 / 96)
    assert st2["ablate: sft"]["expected_flops"] / st2["ablate: sft"]["flops"] == pytest.approx(10 / cap)
    assert st2["eval"]["expected_flops"] / st2["eval"]["flops"] == pytest.approx((PROMPT_TOKENS + 5) / (PROMPT_TOKENS + 16))
    assert res2["assumptions"]["mean_tokens_source"] == "assumed (--mean-tokens 10)"
    assert not res2["worst_fits_deadline"] and not res2["expected_fits_deadline"]

    # the command line: the options reach the plan, the table has both columns, both totals against the deadline
    from skillray.cli.main import app

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = CliRunner().invoke(app, ["plan", str(cfg_file), "--gpus", "1", "--mean-new-tokens", "5",
                                   "--deadline-hours", "0.001"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "wall h max | wall h expected" in out.output and "eval new tokens: assumed (--mean-new-tokens 5)" in out.output
    assert "corpus record tokens: measured by the extract stage" in out.output
    assert "Total, worst case:" in out.output and "Total, expected:" in out.output and "within the 0.001-hour deadline" in out.output


def test_the_rayjobs_deadline_is_the_plans():
    """cluster/kuberay/rayjob.yaml's activeDeadlineSeconds is what `skillray plan` prints for the recipe it runs."""
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    recipe = job["spec"]["entrypoint"].split("--config ")[1].split()[0]
    res = plan(load_config(ROOT / recipe), gpus=8, gpu_memory_gb=80)
    assert job["spec"]["activeDeadlineSeconds"] == res["active_deadline_seconds"], (
        "rerun `skillray plan` on the recipe and copy its activeDeadlineSeconds into cluster/kuberay/rayjob.yaml")
