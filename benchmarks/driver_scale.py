"""The driver's memory through corpus -> extract at up to a million records: bounded, not the corpus' size.

For each size it writes that many short text records (JSONL), builds a tiny random-init Llama (2 blocks,
hidden 32) with SmolLM2's tokenizer, and runs the corpus stage (``source: local``) and the extract stage on
a local Ray, in a fresh process per size. It prints the driver's peak resident memory (``ru_maxrss``: the
Ray workers, which read, tokenize and extract, are other processes), what the imports alone take, and the
growth per record between the sizes. Target (issue 24): under 1 GB at 1,000,000 records.

    python benchmarks/driver_scale.py [--sizes 100000 1000000] [--shard-size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(n: int, shard_size: int, workdir: Path) -> dict:
    """Corpus + extract of ``n`` records in this process; returns the driver's memory and times."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from transformers import LlamaConfig, LlamaForCausalLM

    from skillray.config import CorpusConfig, ExtractConfig, ModelConfig
    from skillray.corpus import run_corpus
    from skillray.extract import run_extract
    from skillray.models import load_tokenizer, resolve_model

    after_imports = _rss_mb()
    model_dir = workdir / "tiny-llama"
    if not model_dir.is_dir():
        tok = load_tokenizer(resolve_model(ModelConfig()))
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)  # fmt: skip
        LlamaForCausalLM(cfg).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    src = workdir / f"records-{n}.jsonl"
    if not src.is_file():
        with open(src, "w") as f:
            for i in range(n):
                a, b = i % 997, (i * 7) % 1009
                f.write(json.dumps({"id": f"r{i:08d}", "text": f"{a} plus {b} is {a + b}; check: {a + b} minus {b} is {a}.",
                                    "skill": ("add", "check", "sum")[i % 3]}) + "\n")  # fmt: skip
    run = workdir / f"run-{n}"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    c = run_corpus(run, CorpusConfig(source="local", path=str(src), fields={"id": "id", "text": "text", "skill": "skill"}))
    t_corpus, after_corpus = time.perf_counter() - t0, _rss_mb()
    t0 = time.perf_counter()
    m = run_extract(run, ModelConfig(name_or_path=str(model_dir), dtype="float32"),
                    ExtractConfig(shard_size=shard_size, max_tokens=64, token_budget=8192, num_cpus_per_actor=1,
                                  num_actors=max(1, (os.cpu_count() or 2) - 1)))  # fmt: skip
    t_extract = time.perf_counter() - t0
    ray.shutdown()
    return {"records": c.summary["rows"], "tokens": m.summary["tokens"], "shards": m.summary["shards"],
            "corpus_s": round(t_corpus, 1), "extract_s": round(t_extract, 1), "rss_imports_mb": round(after_imports),
            "rss_after_corpus_mb": round(after_corpus), "rss_peak_mb": round(_rss_mb())}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="corpus sizes, one process each")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--workdir", type=Path, default=None, help="where records, model and stores go (default: a temp dir)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process of one size
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="skillray-driver-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        print(json.dumps(one(args.one, args.shard_size, workdir)))
        return
    print_machine()
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--shard-size", str(args.shard_size),
                              "--workdir", str(workdir)], capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"size {n} failed:\n{out.stderr[-4000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['records']:>9,} records, {r['tokens']:>11,} tokens, {r['shards']:>5} shards: corpus {r['corpus_s']:7.1f} s, "
              f"extract {r['extract_s']:7.1f} s; driver RSS: imports {r['rss_imports_mb']} MB, after corpus "
              f"{r['rss_after_corpus_mb']} MB, peak {r['rss_peak_mb']} MB", flush=True)  # fmt: skip
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per = (b["rss_peak_mb"] - a["rss_peak_mb"]) * 2**20 / max(b["records"] - a["records"], 1)
        print(f"driver growth: {per:.0f} bytes per record between {a['records']:,} and {b['records']:,} records "
              f"(peak at {b['records']:,}: {b['rss_peak_mb']} MB; target < 1024 MB)")
    print(f"workdir: {workdir} (delete it when done)")


if __name__ == "__main__":
    main()
