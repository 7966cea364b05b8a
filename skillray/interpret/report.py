"""Report sections of the interpret stage (registered in :data:`skillray.report.run.BUILDERS`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skillray.report.document import Figure, Section, Snippets, Table, Text


def _snip(text: str, n: int) -> str:
    text = " ".join(text.split()) if len(text) > n else text
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _fid(d: dict) -> str:
    if d["fidelity"] is None:
        return "n/a"
    return f"{d['fidelity']:.2f} (n={d['fidelity_n']}, p={d['fidelity_p_value']:.3g})"


def sections(run_dir: str | Path) -> list[Section]:
    """Overview (table, explained variance, 2-D scatter by human skill) + one section per direction."""
    from skillray.artifacts import read_json
    from skillray.config import InterpretConfig
    from skillray.corpus.records import read_records
    from skillray.interpret.factors import FACTORS_JSON, explanation, read_factors
    from skillray.interpret.factors import table as factor_table
    from skillray.interpret.profile import record_text
    from skillray.interpret.stage import LABELS, read_labels, read_projections
    from skillray.report import plots

    run_dir = Path(run_dir)
    stage_dir = run_dir / "interpret"
    if not (stage_dir / LABELS).is_file():
        return []
    labels = read_labels(stage_dir)
    proj = read_projections(stage_dir)
    z = proj[[f"d{j}" for j in range(labels["n_components"])]].to_numpy()  # (N, k)
    row = {rid: i for i, rid in enumerate(proj["id"])}
    snippet_chars = labels.get("snippet_chars", InterpretConfig.model_fields["snippet_chars"].default)
    texts: dict[str, str] = {}
    corpus = run_dir / "corpus" / "records.jsonl"
    if corpus.is_file():
        texts = {r.id: record_text(r) for r in read_records(corpus)}

    dirs = labels["directions"]
    overview = Section("Skill directions")
    overview.blocks.append(Text(
        f"{labels['n_rows']} examples, {labels['n_components']} directions; projection: {labels['projection']}; "
        f"labeller: {labels['labeller']}; judge: {labels['judge']}. Pole A = highest projections, pole B = lowest; "
        f"{labels['per_pole']['labelled']} examples per pole were labelled and {labels['per_pole']['heldout']} more per "
        "pole (never shown to the labeller) were placed with the label by the judge: that accuracy is the fidelity "
        "(chance 0.5, p = one-sided binomial test)."
        + (" The offline judge only checks the label's keywords against the held-out texts: it measures lexical "
           "separability, not whether the label is apt." if labels["judge"] == "offline" else "")
    ))
    overview.blocks.append(Table(
        ["direction", "label", "fidelity", "explained var.", "skills at A", "skills at B"],
        [
            [f"d{d['direction']}", d["label"]["short"], _fid(d), round(d["explained_variance_ratio"], 4),
             ", ".join(f"{k}:{v}" for k, v in list(d["skill_mix"]["top"].items())[:3]),
             ", ".join(f"{k}:{v}" for k, v in list(d["skill_mix"]["bottom"].items())[:3])]
            for d in dirs
        ],
    ))
    overview.blocks.append(Figure("explained_variance.png", plots.explained_variance_png(labels["explained_variance_ratio"]),
                                  "Explained variance ratio per direction and cumulative."))
    if z.shape[1] >= 2:
        overview.blocks.append(Figure(
            "scatter_d0_d1.png",
            plots.scatter_png(z[:, 0], z[:, 1], list(proj["skill"]),
                              f"d0: {dirs[0]['label']['short']}", f"d1: {dirs[1]['label']['short']}"),
            "Every example on the first two directions, coloured by its human skill label.",
        ))

    factors_path = stage_dir / FACTORS_JSON
    if factors_path.is_file():
        sec = Section("What each direction aligns with", anchor="factors")
        try:
            doc = read_factors(factors_path)
        except ValueError as e:  # an old or damaged file: say so, keep the rest of the report
            sec.blocks.append(Text(f"Factor associations not shown: {e}"))
        else:
            header, rows, _single = factor_table(doc)
            sec.blocks += [Text(explanation(doc)), Table(header, rows)]
        overview.children.append(sec)

    for d in dirs:
        j = d["direction"]
        lab = d["label"]
        sec = Section(f"d{j}: {lab['short']}", anchor=f"d{j}")
        meta = f"Explained variance {d['explained_variance_ratio']:.4f}. Fidelity {_fid(d)}"
        if d.get("fidelity_abstained"):
            meta += f", {d['fidelity_abstained']} abstained"
        meta += f". Label source: {lab['source']}."
        if lab.get("parse_error"):
            meta += f" (reply not parsed: {lab['parse_error']})"
        sec.blocks.append(Text(meta))
        if lab["axes"]:
            sec.blocks.append(Table(["axis", "pole A", "pole B"], [[a["axis"], a["a"], a["b"]] for a in lab["axes"]]))
        if lab["keywords_a"] or lab["keywords_b"]:
            sec.blocks.append(Table(["keywords A", "keywords B"], [[", ".join(lab["keywords_a"]), ", ".join(lab["keywords_b"])]]))
        top = np.array([row[e["id"]] for e in d["top"]], dtype=np.int64)
        bottom = np.array([row[e["id"]] for e in d["bottom"]], dtype=np.int64)
        held = np.array([row[e["id"]] for e in d["judgements"]], dtype=np.int64)
        sec.blocks.append(Figure(f"d{j}_hist.png", plots.projection_histogram_png(z[:, j], top, bottom, held, f"d{j}"),
                                 f"Projections on d{j}; ticks: labelled poles, triangles: held-out examples."))
        for title, exs in ((f"Pole A (top {len(d['top'])})", d["top"]), (f"Pole B (bottom {len(d['bottom'])})", d["bottom"])):
            sec.blocks.append(Snippets(
                [(f"{e['id']}  skill={e['skill']}  projection={e['projection']:.4g}",
                  _snip(texts.get(e["id"], e.get("sent", "")), snippet_chars)) for e in exs],
                title=title,
            ))
        if d["judgements"]:
            sec.blocks.append(Table(
                ["held-out id", "pole", "judge says", "correct"],
                [[e["id"], e["pole"].upper(), (e["verdict"] or "abstain").upper(), e["correct"]] for e in d["judgements"]],
            ))
        overview.children.append(sec)
    return [overview]
