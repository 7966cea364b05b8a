"""How stable is the default basis? The demo corpus' basis against variants of pooling, prefix skipping,
layer sets and two disjoint halves of the corpus (the referees' third ask; docs/replication.md).

    python experiments/stability.py [--root /work/stability] [--out docs]

Each variant is a run (corpus -> extract -> basis) under ``--root``; finished stages are skipped, so a
stopped run resumes. Writes ``<out>/stability.json`` and ``<out>/stability.md``: per variant, the principal
angles to the default basis and the one-to-one matched directions (|cos|), from
:func:`skillray.basis.stability.compare_bases` (what `skillray compare` prints).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _variants(cfg) -> dict[str, dict]:
    """name -> overrides of the demo config (extract section, or a corpus half)."""
    blocks = 30  # SmolLM2-135M's decoder blocks
    inner = list(range(1, blocks - 1))  # the default: all blocks but the first and the last
    third = len(inner) // 3
    return {
        "default": {},
        "pooling response_mean": {"extract": {"pooling": "response_mean"}},
        "no prefix skipped": {"extract": {"skip_prefix": "none"}},
        "early layers (1-9)": {"extract": {"layers": inner[:third]}},
        "middle layers (10-18)": {"extract": {"layers": inner[third : 2 * third]}},
        "late layers (19-28)": {"extract": {"layers": inner[2 * third :]}},
        "corpus half A": {"half": 0},
        "corpus half B": {"half": 1},
    }


def _run(cfg, root: Path, name: str, over: dict):
    from skillray.cli.common import run_stage
    from skillray.config import RunConfig
    from skillray.pipeline import run_pipeline

    run = root / name.replace(" ", "_").replace("(", "").replace(")", "")
    d = cfg.model_dump()
    d.update(run_dir=str(run), stages=["corpus", "extract", "basis"])
    if "extract" in over:
        d["extract"] = {**d["extract"], **over["extract"]}
    if "half" in over:  # a local corpus of every other record of the default corpus (disjoint halves)
        from skillray.corpus.records import read_records, write_records

        src = root / "default" / "corpus" / "records.jsonl"
        recs = [r for i, r in enumerate(read_records(src)) if i % 2 == over["half"]]
        path = run / "half.jsonl"
        if not path.is_file():
            write_records(path, recs)
        d["corpus"] = {"source": "local", "path": str(path),
                       "fields": {"id": "id", "messages": "messages", "answer": "answer", "skill": "skill"}}  # fmt: skip
    c = RunConfig.model_validate(d)
    t0 = time.perf_counter()
    run_pipeline(c, False, runner=run_stage)
    return run, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--root", default="runs/stability", help="Where the variant runs live (resumable).")
    ap.add_argument("--out", default="docs", help="Folder of stability.json / stability.md.")
    args = ap.parse_args()

    from skillray.basis import SkillBasis
    from skillray.basis.stability import compare_bases
    from skillray.config import load_config
    from skillray.replicate import _machine

    cfg = load_config(args.config)
    root = Path(args.root)
    runs, secs = {}, {}
    for name, over in _variants(cfg).items():
        runs[name], secs[name] = _run(cfg, root, name, over)
        print(f"{name}: {secs[name]:.0f} s", flush=True)
    base = SkillBasis.load(runs["default"] / "basis")
    rows = []
    for name, run in runs.items():
        if name == "default":
            continue
        other = SkillBasis.load(run / "basis")
        c = compare_bases(base, other)
        rows.append({"variant": name, "layers_compared": len(c["layers"]), "shared_only": c["shared_only"],
                     "principal_angles_deg": c["principal_angles_deg"], "mean_abs_cos": c["mean_abs_cos"],
                     "matched_abs_cos": [abs(m["cos"]) for m in sorted(c["matches"], key=lambda m: m["a"])],
                     "matched_to": [m["b"] for m in sorted(c["matches"], key=lambda m: m["a"])],
                     "seconds": round(secs[name], 1)})  # fmt: skip
    ha, hb = (SkillBasis.load(runs[f"corpus half {x}"] / "basis") for x in "AB")
    c = compare_bases(ha, hb)
    rows.append({"variant": "half A vs half B", "layers_compared": len(c["layers"]), "shared_only": False,
                 "principal_angles_deg": c["principal_angles_deg"], "mean_abs_cos": c["mean_abs_cos"],
                 "matched_abs_cos": [abs(m["cos"]) for m in sorted(c["matches"], key=lambda m: m["a"])],
                 "matched_to": [m["b"] for m in sorted(c["matches"], key=lambda m: m["a"])], "seconds": 0.0})  # fmt: skip
    k = base.components_.shape[0]
    doc = {"format": "skillray.stability/1", "config": args.config, "machine": _machine(), "k": k, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stability.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"| variant (vs the default basis) | layers compared | largest / median principal angle (deg) | "
             f"mean matched abs cos | matched abs cos d0..d{k - 1} |", "|---|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        a = r["principal_angles_deg"]
        lines.append(f"| {r['variant']} | {r['layers_compared']}{' (shared)' if r['shared_only'] else ''} | "
                     f"{a[0]:.1f} / {float(np.median(a)):.1f} | {r['mean_abs_cos']:.3f} | "
                     + " ".join(f"{x:.2f}" for x in r["matched_abs_cos"]) + " |")  # fmt: skip
    (out / "stability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
