"""Checks that catch a cluster recipe's mistakes before hours of work: URLs where run files need a mounted
filesystem, and prompts that cannot fit the model's context."""

from __future__ import annotations

import pytest

from skillray.config import EvalBenchmark, EvalConfig, ModelConfig, RunConfig


@pytest.mark.parametrize("raw, field", [({"run_dir": "s3://bucket/run"}, "run_dir"),
                                        ({"sft": {"storage_path": "gs://b/ckpt"}}, "sft.storage_path")])
def test_urls_are_refused_naming_the_field(raw, field):
    with pytest.raises(ValueError, match=rf"{field}=.*a URL.*filesystem every node mounts"):
        RunConfig.model_validate(raw)
    assert RunConfig.model_validate({"run_dir": "/mnt/cluster_storage/run"}).run_dir == "/mnt/cluster_storage/run"


def test_prompts_past_the_context_fail_before_generation(tiny_model, tmp_path):
    from skillray.eval import run_eval

    # the tiny model's context is 1024 tokens: a short prompt + 1020 new tokens cannot fit
    cfg = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=2)],
                     n_samples=1, temperature=0, max_new_tokens=1020)  # fmt: skip
    with pytest.raises(ValueError, match=r"procedural: 2 prompt\(s\), the longest 'basic_arithmetic-h0-\d+' with "
                                         r"\d+ tokens \+ max_new_tokens 1020 > 1024"):
        run_eval(tmp_path / "run", cfg, ModelConfig(name_or_path=tiny_model.path))
    assert not list((tmp_path / "run").rglob("chunk-*.jsonl"))  # nothing generated


def test_vllm_prompts_past_max_model_len_fail_before_any_engine_starts(tiny_model, tmp_path):
    """On vllm the limit is eval.vllm_max_model_len when set: the eval stage refuses before generating (no engine
    is started: vllm_python does not even exist here), naming both settings."""
    from skillray.eval import run_eval

    cfg = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=2)],
                     n_samples=1, temperature=0, max_new_tokens=60, backend="vllm", vllm_max_model_len=64,
                     vllm_python=str(tmp_path / "no-such-python"), num_actors=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"context of 64 tokens \(eval.vllm_max_model_len\):\n.*\+ max_new_tokens 60 > 64"
                                         r"(.|\n)*lower eval.max_new_tokens, or raise eval.vllm_max_model_len"):
        run_eval(tmp_path / "run", cfg, ModelConfig(name_or_path=tiny_model.path))
    assert not list((tmp_path / "run").rglob("chunk-*.jsonl"))


def test_pipeline_job_runs_the_configs_ablation_after_the_pipeline(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "jobs"))
    from pipeline import main  # jobs/pipeline.py, the RayJob entrypoint

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nstages: [corpus]\ncorpus: {{size_per_task: 2}}\n"
                   "ablate: {strategies: [{strategy: direction}, {strategy: random}], budgets: [2], seeds: [0]}\n")
    assert main(["--config", str(cfg), "--no-ablate"]) == 0  # the pipeline alone (only the corpus stage)
    # by default the grid runs next: here it stops at once (its direction strategy needs a basis, none was made),
    # with the user-error exit code and a message naming what is missing
    assert main(["--config", str(cfg)]) == 2
    cap = capsys.readouterr()
    assert "run `skillray basis` first" in cap.out + cap.err
