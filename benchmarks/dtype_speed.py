"""float32 against bfloat16 on this CPU: what `model.dtype: auto` buys.

In one process, interleaved (float32, bfloat16, float32, ...) so background load hits both alike:

* SmolLM2-135M forward without the LM head, ``--batch`` x ``--seq`` tokens (the extract stage's work);
* greedy generate, ``--batch`` prompts x ``--new-tokens`` (eval, probe, safety replies, serve);
* one SFT optimizer step (forward + backward + AdamW) at ``--sft-batch`` x ``--seq``: float32 against
  bf16 autocast over float32 weights (what the sft stage runs when the dtype resolves to bfloat16);
* with ``--extract N``: the whole extract stage (Ray, actor start, writing the store) on N records
  of the default corpus, once per dtype, and the per-row cosine of the two stores' vectors.

Prints tok/s per dtype, medians of ``--repeats``, and the bf16 / fp32 ratios.

    python benchmarks/dtype_speed.py [--repeats 3] [--extract 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine, warn_if_busy  # noqa: E402

DTYPES = ("float32", "bfloat16")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sft-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extract", type=int, default=0,
                    help="about this many records (10 tasks of the default corpus) for the extract stage; 0 = skip")
    args = ap.parse_args()
    print_machine()  # every number below came from this CPU
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from transformers import AutoModelForCausalLM

    from skillray.config import ModelConfig
    from skillray.models import choose_dtype, load_tokenizer, resolve_model

    print(f"model.dtype=auto here resolves to: {choose_dtype('auto', 'cpu')}")
    torch.set_num_threads(args.threads)
    resolved = resolve_model(ModelConfig())
    tok = load_tokenizer(resolved)
    models = {d: AutoModelForCausalLM.from_pretrained(resolved.path, dtype=getattr(torch, d)).eval() for d in DTYPES}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (args.batch, args.seq), generator=g)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5? Explain."}], tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    enc = tok([prompt] * args.batch, return_tensors="pt", add_special_tokens=False)
    sft_ids = ids[: args.sft_batch]
    warn_if_busy()

    def forward(d):
        with torch.inference_mode():
            models[d].model(input_ids=ids, use_cache=False)  # no LM head, like extraction

    def generate(d):
        with torch.inference_mode():
            models[d].generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id)  # fmt: skip

    train = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).train()
    opt = torch.optim.AdamW(train.parameters(), lr=1e-6)

    def sft_step(d):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=d == "bfloat16"):
            loss = train(input_ids=sft_ids, labels=sft_ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    work = {"forward": (forward, args.batch * args.seq), "generate": (generate, args.batch * args.new_tokens),
            "sft step": (sft_step, args.sft_batch * args.seq)}  # fmt: skip
    times = {(w, d): [] for w in work for d in DTYPES}
    for w, (fn, _) in work.items():
        for d in DTYPES:
            fn(d)  # warm-up: oneDNN picks and caches its kernels on the first call
    for _ in range(args.repeats):
        for w, (fn, _) in work.items():
            for d in DTYPES:
                times[(w, d)].append(_time(lambda: fn(d)))
    print(f"{args.threads} threads; medians of {args.repeats} interleaved runs (tokens/s):")
    for w, (_, n) in work.items():
        med = {d: statistics.median(times[(w, d)]) for d in DTYPES}
        print(f"  {w:9s} float32 {n / med['float32']:7.1f}   bfloat16 {n / med['bfloat16']:7.1f}   "
              f"ratio bf16/fp32 {med['float32'] / med['bfloat16']:.2f}x")  # fmt: skip
    del models, train, opt

    if args.extract:
        import ray

        from skillray.config import CorpusConfig, ExtractConfig
        from skillray.corpus import run_corpus
        from skillray.extract import ActivationStore, run_extract

        base = Path(tempfile.mkdtemp(prefix="skillray-dtype-"))
        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        seconds, stores = {}, {}
        for d in DTYPES:
            run = base / d
            run_corpus(run, CorpusConfig(size_per_task=max(1, args.extract // 10), seed=7))  # 10 tasks
            cfg = ExtractConfig(num_cpus_per_actor=args.threads, shard_size=32)
            m = run_extract(run, ModelConfig(dtype=d), cfg)
            seconds[d], tokens = m.summary["seconds"], m.summary["tokens"]
            stores[d] = ActivationStore(run / "extract")
        ray.shutdown()
        a, b = stores["float32"].load_all(), stores["bfloat16"].load_all()
        assert stores["float32"].ids() == stores["bfloat16"].ids()
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"extract stage, {len(a)} records / {tokens} tokens (whole stage incl. Ray actor start):")
        print(f"  float32 {tokens / seconds['float32']:7.1f} tok/s   bfloat16 {tokens / seconds['bfloat16']:7.1f} tok/s   "
              f"ratio bf16/fp32 {seconds['float32'] / seconds['bfloat16']:.2f}x   "
              f"cosine per row min {cos.min():.5f} median {np.median(cos):.5f}")  # fmt: skip
    warn_if_busy()


if __name__ == "__main__":
    main()
