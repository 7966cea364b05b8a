"""Throughput of `skillray extract` against the plain batched loop of the seed notebook.

Both run SmolLM2-135M-Instruct with the same threads over the same generated
corpus (a realistic spread of lengths: short arithmetic to long logic puzzles and worked
solutions), pooling the mean over tokens at the default layers. The baseline is a plain
single-process loop: corpus order, fixed batch size, right padding, the full model with
output_hidden_states. skillray's time is the whole stage (tokenisation, Ray actor start,
model load in the actor, extraction, writing the store); the baseline's excludes its model
load. The baseline runs in float32 (the seed's dtype); skillray in ``--dtype`` (default auto:
bfloat16 on a CPU with AMX / AVX512-BF16, printed). Prints tokens/s of both and their ratio,
and how close the vectors are (cosine per row; max |difference| too).

    python benchmarks/extract_throughput.py [--per-task 20] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine, warn_if_busy  # noqa: E402

TASKS = [
    "basic_arithmetic", "gsm_symbolic", "knights_knaves", "number_sorting", "family_relationships",
    "letter_counting", "syllogism", "polynomial_equations", "simple_equations", "zebra_puzzles",
]  # fmt: skip


def plain_loop(model, tokenizer, texts: list[str], layers: list[int], batch_size: int, max_tokens: int) -> np.ndarray:
    """The seed's way: fixed batches in corpus order, right padding, all hidden states."""
    out = []
    tokenizer.padding_side = "right"
    for a in range(0, len(texts), batch_size):
        enc = tokenizer(texts[a : a + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_tokens, add_special_tokens=False)  # fmt: skip
        with torch.inference_mode():
            hs = model(**enc, output_hidden_states=True).hidden_states
        m = enc["attention_mask"][..., None].float()
        out.append(torch.cat([(hs[i + 1] * m).sum(1) / m.sum(1) for i in layers], dim=1).numpy())
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-task", type=int, default=20, help="records per task (10 tasks)")
    p.add_argument("--batch-size", type=int, default=8, help="baseline batch size")
    p.add_argument("--token-budget", type=int, default=4096, help="skillray padded tokens per micro-batch")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="skillray's model.dtype")
    args = p.parse_args()
    print_machine()  # every number below came from this CPU
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from transformers import AutoModelForCausalLM

    from skillray.config import CorpusConfig, ExtractConfig, ModelConfig
    from skillray.corpus import run_corpus
    from skillray.corpus.records import read_records
    from skillray.extract import ActivationStore, run_extract
    from skillray.extract.tokenize import render, tokenize_records
    from skillray.models import load_tokenizer, normalize_layers, resolve_model

    resolved = resolve_model(ModelConfig())
    tok = load_tokenizer(resolved)
    run = Path(tempfile.mkdtemp(prefix="skillray-bench-"))
    run_corpus(run, CorpusConfig(tasks=TASKS, size_per_task=args.per_task, seed=7))
    records = read_records(run / "corpus" / "records.jsonl")
    t = tokenize_records(records, tok, args.max_tokens)
    lengths = t.lengths
    n_tok = int(lengths.sum())
    print(f"corpus: {len(records)} records, {n_tok} tokens, length min/median/max "
          f"{lengths.min()}/{int(np.median(lengths))}/{lengths.max()}")  # fmt: skip
    layers = normalize_layers(None, 30)
    warn_if_busy()

    # Baseline, same process, same threads.
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    texts = [render(r, tok)[1] for r in records]
    t0 = time.perf_counter()
    base = plain_loop(model, tok, texts, layers, args.batch_size, args.max_tokens)
    t_base = time.perf_counter() - t0
    padded = sum(len(lengths[a : a + args.batch_size]) * lengths[a : a + args.batch_size].max()
                 for a in range(0, len(lengths), args.batch_size))  # fmt: skip
    del model

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    cfg = ExtractConfig(max_tokens=args.max_tokens, token_budget=args.token_budget, shard_size=64,
                        num_cpus_per_actor=args.threads)  # fmt: skip
    t0 = time.perf_counter()
    m = run_extract(run, ModelConfig(dtype=args.dtype), cfg)
    t_ours = time.perf_counter() - t0
    ray.shutdown()

    store = ActivationStore(run / "extract")
    pos = {rid: i for i, rid in enumerate(t.ids)}
    ours = store.load_all()
    ref = base[[pos[i] for i in store.ids()]]
    err = float(np.abs(ours - ref).max())
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))

    print(f"plain loop (batch {args.batch_size}, corpus order): {t_base:7.1f} s  {n_tok / t_base:7.1f} tok/s  "
          f"padding overhead {padded / n_tok - 1:.0%}")  # fmt: skip
    print(f"skillray extract (whole stage), {m.summary['dtype']}:")
    print(f"                                     {t_ours:7.1f} s  {n_tok / t_ours:7.1f} tok/s  "
          f"padding overhead {m.summary['padding_overhead']:.0%}")  # fmt: skip
    print(f"ratio skillray / plain: {t_base / t_ours:.2f}x   (vectors: cosine per row min {cos.min():.6f}, "
          f"max |difference| {err:.1e})")  # fmt: skip
    warn_if_busy()


if __name__ == "__main__":
    main()
