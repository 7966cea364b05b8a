"""Report section of the probe stage (registered in :data:`skillray.report.run.BUILDERS`).

The combined ranked table of ``<run>/probe/probe.json`` (the one ``probe.md`` shows), each probe's
unsteered baseline, its cost, and the agreement of the cheap ranking with the expensive one.
"""

from __future__ import annotations

from pathlib import Path

from skillray.report.document import Section, Table, Text


def pair_name(row: dict) -> str:
    """``d3+`` / ``d3-`` for a (direction, sign) row."""
    return f"d{row['direction']}{'+' if row['sign'] == 1 else '-'}"


def read_finished_probe(run_dir: Path) -> dict | None:
    """The combined table of a finished ``<run>/probe`` plus each probe's baseline (``base``: {probe: dict})
    and the probe config (``config``), or None when the stage has not finished."""
    from skillray.artifacts import read_manifest
    from skillray.probe.stage import read_probe

    stage_dir = run_dir / "probe"
    m = read_manifest(stage_dir)
    if m is None or not m.complete or not (stage_dir / "probe.json").is_file():
        return None
    doc = read_probe(stage_dir)
    doc["config"] = (m.config or {}).get("probe") or {}
    doc["base"] = {p: read_probe(stage_dir, p).get("base") for p in doc.get("probes", [])
                   if (stage_dir / f"{p}.json").is_file()}  # fmt: skip
    return doc


def _baseline(probe: str, base: dict | None) -> str:
    if not base:
        return ""
    if probe == "likelihood":
        return (f"Unsteered mean response log-likelihood {base['loglik']:.4f} over {base['n_dev']} corpus "
                "dev records.")  # fmt: skip
    return (f"Unsteered Pass@{base['k']} {base['pass_at_k']:.4f} (mean score {base['score']:.4f}) over "
            f"{base['n_dev']} procedural dev problems x {base['n_samples']} samples.")  # fmt: skip


def sections(run_dir: str | Path) -> list[Section]:
    from skillray.probe.stage import PROBES, SCORE, short_labels

    run_dir = Path(run_dir)
    doc = read_finished_probe(run_dir)
    if doc is None:
        return []
    labels = short_labels(run_dir)
    ran = [p for p in PROBES if p in doc["costs"]]
    by = doc["ranked_by"]
    sec = Section("Probe", anchor="probe")
    c = doc["config"]
    intro = [f"(direction, sign) pairs ranked by the {by} probe ({SCORE[by]}): each pair steers the model along "
             f"the direction (alpha {c.get('alpha', '?')}, mode {c.get('mode', '?')}) and measures the change "
             "against the unsteered model."]  # fmt: skip
    intro += [_baseline(p, doc["base"].get(p)) for p in ran]
    if "accuracy" in ran:
        intro.append("The accuracy interval is a bootstrap over dev problems; an interval that includes 0 means no "
                     "detectable change.")  # fmt: skip
    sec.blocks.append(Text(" ".join(t for t in intro if t)))
    head = ["rank", "pair", "label"]
    if "likelihood" in ran:
        head += ["delta loglik", "se", "likelihood rank"]
    if "accuracy" in ran:
        head += ["delta Pass@k", "interval", "delta score", "accuracy rank"]
    rows = []
    for r in doc["rows"]:
        cells = [r["rank"], pair_name(r), labels.get(r["direction"], "")]
        if "likelihood" in ran:
            cells += [f"{r['delta_loglik']:+.5f}", f"{r['delta_loglik_se']:.5f}", r["likelihood_rank"]]
        if "accuracy" in ran:
            cells += [f"{r['delta_pass_at_k']:+.4f}", f"[{r['accuracy_ci_low']:+.3f}, {r['accuracy_ci_high']:+.3f}]",
                      f"{r['delta_score']:+.4f}", r["accuracy_rank"]]  # fmt: skip
        rows.append(cells)
    sec.blocks.append(Table(head, rows))
    sec.blocks.append(Table(["probe", "forward passes", "generated tokens", "input tokens", "seconds"],
                            [[p, c["forward_passes"], c["generated_tokens"], c["input_tokens"], c["seconds"]]
                             for p, c in doc["costs"].items()]))  # fmt: skip
    ag = doc.get("agreement")
    if ag:
        def num(x):
            return "undefined" if x is None else f"{x:+.3f}"

        text = (f"Agreement of the {ag['cheap']} ranking with the {ag['expensive']} ranking over {ag['n_pairs']} "
                f"pairs: Spearman {num(ag['spearman'])}, Kendall {num(ag['kendall'])}; top-1 "
                f"{'agrees' if ag['top1_agree'] else 'differs'} ({ag['cheap']}: {ag['cheap_top']}, "
                f"{ag['expensive']}: {ag['expensive_top']}).")  # fmt: skip
        if ag.get("note"):
            text += f" {ag['note'][0].upper()}{ag['note'][1:]}."
        sec.blocks.append(Text(text))
    return [sec]
