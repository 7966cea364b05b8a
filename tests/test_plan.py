"""`skillray plan`: per-stage cost and checks from the model's shape and the config, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from skillray.config import load_config
from skillray.plan import model_shape, plan

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
