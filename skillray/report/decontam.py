"""The report's "Decontamination" section: per selection, how many training records share text with an
eval benchmark's problems (select.decontaminate; :mod:`skillray.eval.decontam`), and the first pairs."""

from __future__ import annotations

from pathlib import Path


def sections(run_dir: str | Path) -> list:
    """One section with a row per checked selection under ``<run>/select`` (empty when none was checked)."""
    from skillray.artifacts import read_manifest
    from skillray.report.document import Bullets, Section, Table, Text

    rows, examples = [], []
    for d in sorted(p for p in (Path(run_dir) / "select").glob("*") if p.is_dir()):
        m = read_manifest(d)
        dec = (m.summary or {}).get("decontamination") if m is not None and m.complete else None
        if not isinstance(dec, dict) or "benchmarks" not in dec:
            continue
        per = dec["benchmarks"]
        contaminated = ", ".join(f"{b}: {v['contaminated_problems']} of {v['problems']}" for b, v in per.items())
        rows.append([d.name, dec["mode"], dec.get("n"), dec.get("records_checked"), dec.get("overlapping_records"),
                     dec.get("dropped_from_pool", 0), contaminated or "-",
                     ", ".join(sorted(dec.get("not_checked", {}))) or "-"])  # fmt: skip
        examples += [f"{d.name}: {e}" for e in dec.get("examples", [])[:3]]
    if not rows:
        return []
    sec = Section("Decontamination")
    sec.blocks.append(Text("Training records that share a word n-gram (or, for a problem shorter than n words, the whole "
                           "normalised question) with an eval problem. report = counted in the selection; drop = left "
                           "out of the pool before selecting. Full lists: <run>/select/<name>/decontam.json."))
    sec.blocks.append(Table(["selection", "mode", "n", "records checked", "overlapping records", "dropped",
                             "contaminated problems", "not checked"], rows))  # fmt: skip
    if examples:
        sec.blocks.append(Bullets(examples))
    return [sec]
