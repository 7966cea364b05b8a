"""Report sections of the eval stage (registered in :data:`skillray.report.run.BUILDERS`).

Shows ``<run>/eval`` (Pass@k with intervals), its steering sweep (paired deltas), and every
fine-tuned model evaluated under ``<run>/sft/<name>/eval`` against the base model on the
same problems and sampling seeds (paired bootstrap over problems).
"""

from __future__ import annotations

import json
from pathlib import Path

from skillray.artifacts import read_manifest, verify_artifact
from skillray.report.document import Figure, Section, Table, Text


def read_results(stage_dir: Path) -> list[dict] | None:
    p = stage_dir / "results.json"
    if not p.is_file():
        return None
    verify_artifact(p)
    return json.loads(p.read_text())["results"]


def _ci(r: dict, key: str) -> str:
    return f"{r[key]:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"


def _figures(stage_dir: Path, prefix: str) -> list[Figure]:
    return [Figure(f"{prefix}_{p.name}", p.read_bytes(), p.stem.replace("_", " "))
            for p in sorted((stage_dir / "plots").glob("*.png"))]  # fmt: skip


def _passk_section(title: str, stage_dir: Path, prefix: str) -> Section | None:
    rows = read_results(stage_dir)
    if rows is None:
        return None
    m = read_manifest(stage_dir)
    sec = Section(title)
    model = ((m.config or {}).get("model") or {}).get("name_or_path") if m else None
    if model:
        sec.blocks.append(Text(f"Model: {model}. Unbiased Pass@k, mean over problems, with a bootstrap interval over problems."))
    sec.blocks.append(Table(["benchmark", "k", "Pass@k", "interval", "problems", "samples/problem"],
                            [[r["benchmark"], r["k"], round(r["pass_at_k"], 4), f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                              r["n_problems"], r["n_samples"]] for r in rows]))  # fmt: skip
    sec.blocks.extend(_figures(stage_dir, prefix))
    return sec


def sft_vs_base(base_dir: Path, sft_eval_dir: Path):
    """Paired Pass@k deltas (fine-tuned - base) on the problems both evaluated, with the base eval's
    k values and bootstrap settings; None when the two evals are not comparable (other problems/settings)."""
    from skillray.eval.tables import paired_delta_table, problem_counts, read_sample_files

    mb, ms = read_manifest(base_dir), read_manifest(sft_eval_dir)
    if mb is None or ms is None or not (mb.complete and ms.complete):
        return None
    eb, es = dict(mb.config["eval"]), dict(ms.config["eval"])
    eb.pop("sweep", None), es.pop("sweep", None)  # the fine-tuned model is evaluated without the sweep
    if eb != es:
        return None  # different benchmarks, samples or decoding: no paired comparison
    if {k: v for k, v in mb.inputs.items() if k != "model"} != {k: v for k, v in ms.inputs.items() if k != "model"}:
        return None
    samples = []
    for arm, d in (("base", base_dir), ("sft", sft_eval_dir)):
        s = read_sample_files(sorted((d / "samples" / "base").rglob("*.jsonl")))
        s["arm"] = arm
        samples.append(s)
    import pandas as pd

    counts = problem_counts(pd.concat(samples, ignore_index=True))
    k_values = (mb.outputs.get("analysis") or {}).get("k_values") or [1]
    return paired_delta_table(counts, "base", k_values, eb.get("n_bootstrap", 1000), eb.get("confidence", 0.95),
                              eb.get("seed", 0))  # fmt: skip


def sections(run_dir: str | Path) -> list[Section]:
    run_dir = Path(run_dir)
    out = []
    base = _passk_section("Evaluation", run_dir / "eval", "eval")
    if base is None:
        return []
    out.append(base)
    sweep_rows = read_results(run_dir / "eval" / "sweep")
    if sweep_rows is not None:
        sw = Section("Steering sweep")
        sw.blocks.append(Text("Pass@k of each steered arm minus the unsteered model's on the same problems and "
                              "seeds; the interval is a paired bootstrap over problems."))
        sw.blocks.append(Table(["arm", "benchmark", "k", "steered", "unsteered", "delta [interval]"],
                               [[r["arm"], r["benchmark"], r["k"], round(r["pass_at_k"], 4), round(r["base_pass_at_k"], 4),
                                 _ci(r, "delta")] for r in sweep_rows]))  # fmt: skip
        sw.blocks.extend(_figures(run_dir / "eval" / "sweep", "sweep"))
        base.children.append(sw)
    for d in sorted((run_dir / "sft").glob("*/eval")):
        name = d.parent.name
        sec = _passk_section(f"Fine-tuned model: {name}", d, f"sft_{name}")
        if sec is None:
            continue
        delta = sft_vs_base(run_dir / "eval", d)
        if delta is not None and len(delta):
            sec.blocks.insert(0, Text("Paired against the base model on the same problems and sampling seeds "
                                      "(fine-tuned - base; paired bootstrap over problems)."))
            sec.blocks.insert(1, Table(["benchmark", "k", "fine-tuned", "base", "delta [interval]"],
                                       [[r["benchmark"], r["k"], round(r["pass_at_k"], 4), round(r["base_pass_at_k"], 4),
                                         _ci(r, "delta")] for _, r in delta.iterrows()]))  # fmt: skip
        else:
            sec.blocks.insert(0, Text("Not paired with the base model: the two evals used different benchmarks or "
                                      "decoding settings."))
        base.children.append(sec)
    return out
