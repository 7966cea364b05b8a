"""Throughput of `skillray extract`: against a bare forward, and against the seed notebook's loop.

All three run SmolLM2-135M-Instruct with the same threads over the same generated corpus (a
realistic spread of lengths: short arithmetic to long logic puzzles and worked solutions;
>= 2,000 records by default), pooling the mean over tokens at the default layers.

* skillray: the whole stage (tokenisation, Ray actor start, model load in the actor,
  extraction, writing the store) in ``--dtype`` (default auto: bfloat16 on a CPU with AMX /
  AVX512-BF16, printed).
* bare forward: this process, the same dtype, the same micro-batches (the stage's shards and
  ``token_budget_batches``), the decoder stack alone (``model.model``: no hooks, no pooling,
  no LM head); model load excluded. stage / bare is the stage's whole overhead.
* malloc: the stage's actor and the bare forward both keep freed memory
  (:func:`skillray.models.keep_freed_memory`, which every model-loading process calls; the seed loop
  runs after them in this process, so it does too); ``SKILLRAY_MALLOC=default`` runs all three with
  glibc's defaults, which refault each micro-batch's activations (printed).
* seed loop: corpus order, fixed batch size, right padding, the full model with
  output_hidden_states, float32 (the seed's dtype); model load excluded. It runs on every
  ``--seed-every``-th record (a systematic sample of the same length mix) since it is slow.

Prints tokens/s of each, the two ratios (targets: stage >= 0.9 of the bare forward; >= 3x the
seed loop on an AMX CPU), the machine's load, and the cosine per row between the stage's and the
seed's vectors (they differ by definition where the stage leaves out the shared prompt prefix).

    python benchmarks/extract_throughput.py [--per-task 200] [--seed-every 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    p.add_argument("--per-task", type=int, default=200, help="records per task (10 tasks)")
    p.add_argument("--seed-every", type=int, default=5, help="the seed loop runs on every n-th record (1 = all)")
    p.add_argument("--batch-size", type=int, default=8, help="baseline batch size")
    p.add_argument("--token-budget", type=int, default=8192, help="padded tokens per micro-batch (the stage and the bare forward; the stage default)")
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
    from skillray.extract.extractor import token_budget_batches
    from skillray.extract.stage import plan_shards
    from skillray.extract.tokenize import render, tokenize_records
    from skillray.models import choose_dtype, keep_freed_memory, load_tokenizer, normalize_layers, resolve_model

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

    torch.set_num_threads(args.threads)
    busy_before = warn_if_busy()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    cfg = ExtractConfig(max_tokens=args.max_tokens, token_budget=args.token_budget, num_cpus_per_actor=args.threads)
    t0 = time.perf_counter()
    m = run_extract(run, ModelConfig(dtype=args.dtype), cfg)
    t_ours = time.perf_counter() - t0
    ray.shutdown()
    dtype = choose_dtype(args.dtype, "cpu")

    # Bare forward: the stage's micro-batches, same dtype and threads, no hooks / pooling / LM head; the same
    # malloc settings as the stage's actor (load_model applies them there).
    kept = keep_freed_memory()
    print("malloc: " + ("freed memory kept (skillray.models.keep_freed_memory) in the stage's actor, the bare forward "
                        "and the seed loop" if kept else "glibc defaults (SKILLRAY_MALLOC=default or no mallopt)"))
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype.torch_dtype).eval()
    batches = [shard[b] for shard in plan_shards(t, cfg.shard_size) for b in token_budget_batches(lengths[shard], cfg.token_budget)]
    pad = int(tok.pad_token_id or 0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in batches:
            T = int(lengths[idx].max())
            ids = torch.full((len(idx), T), pad, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : lengths[i]] = torch.as_tensor(t.input_ids[i])
            attn = (torch.arange(T)[None, :] < torch.as_tensor(lengths[idx])[:, None]).long()
            model.model(input_ids=ids, attention_mask=attn, use_cache=False)
    t_bare = time.perf_counter() - t0
    del model

    # The seed's loop on a systematic sample, float32.
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    sample = np.arange(0, len(records), max(1, args.seed_every))
    texts = [render(records[i], tok)[1] for i in sample]
    n_tok_seed = int(lengths[sample].sum())
    t0 = time.perf_counter()
    base = plain_loop(model, tok, texts, layers, args.batch_size, args.max_tokens)
    t_base = time.perf_counter() - t0
    ls = lengths[sample]
    padded = sum(len(ls[a : a + args.batch_size]) * ls[a : a + args.batch_size].max() for a in range(0, len(ls), args.batch_size))
    del model
    busy_after = warn_if_busy()

    store = ActivationStore(run / "extract")
    pos = {rid: i for i, rid in enumerate(store.ids())}
    ours = store.load_all()[[pos[t.ids[i]] for i in sample]]
    cos = (ours * base).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(base, axis=1))

    stage_tps, bare_tps, seed_tps = n_tok / t_ours, n_tok / t_bare, n_tok_seed / t_base
    print(f"skillray extract (whole stage, {m.summary['dtype']}): {t_ours:7.1f} s  {stage_tps:7.1f} tok/s  "
          f"padding overhead {m.summary['padding_overhead']:.0%}")
    print(f"bare forward ({dtype.name}, the stage's micro-batches): {t_bare:7.1f} s  {bare_tps:7.1f} tok/s")
    print(f"seed loop (float32, batch {args.batch_size}, corpus order, {len(sample)} records): {t_base:7.1f} s  "
          f"{seed_tps:7.1f} tok/s  padding overhead {padded / max(n_tok_seed, 1) - 1:.0%}")
    print(f"ratio stage / bare forward: {stage_tps / bare_tps:.2f}   (target >= 0.9)")
    print(f"ratio stage / seed loop:    {stage_tps / seed_tps:.2f}x  (target >= 3x on AMX)")
    print(f"vectors vs the seed loop's: cosine per row min {cos.min():.4f}, median {np.median(cos):.4f} (not a dtype check: the seed "
          f"averages every token, the stage leaves out {m.summary['prefix_skipped']})")
    print(f"machine busy: {busy_before:.0%} before, {busy_after:.0%} after (absolute tok/s are inflated by load; the ratios are from one process)")
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
