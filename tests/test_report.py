"""The report document (HTML + Markdown), its plots, and the run report's section builders."""

from __future__ import annotations

import numpy as np
import pytest

from skillray.report import (BUILDERS, Bullets, Figure, Report, Section, Snippets, Table, Text, build_run_report,
                             write_run_report)
from skillray.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_are_pngs():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(50)
    order = np.argsort(z)
    for png in (
        plots.explained_variance_png([0.5, 0.2, 0.1]),
        plots.projection_histogram_png(z, order[-3:], order[:3], order[3:5], "d0"),
        plots.scatter_png(z, rng.standard_normal(50), ["a", "b", None, "c", "a"] * 10, "d0", "d1"),
    ):
        assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_html_escapes_and_markdown_links(tmp_path):
    png = plots.explained_variance_png([0.6, 0.3])
    sec = Section("Overview <b>", [Text("x < y & <script>alert(1)</script>"), Table(["a", "b|c"], [[1.234567, None], ["p|q", "z"]]),
                                   Bullets(["one <i>", ("two", ["two.a", "two.b"])])])
    sec.children.append(Section("Child", [Figure("ev.png", png, "variance"), Snippets([("id=1", "<i>raw</i>\nline 2")], title="Top")]))
    report = Report("T", intro=["hello"])
    report.add(sec)
    out = report.write(tmp_path / "rep")
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;i&gt;raw&lt;/i&gt;" in html
    assert 'id="overview-b"' in html and "<h3>Child</h3>" in html and "1.235" in html
    assert "<li>one &lt;i&gt;</li>" in html and "<li>two<ul><li>two.a</li><li>two.b</li></ul></li>" in html
    assert html.count("data:image/png;base64,") == 1
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Overview <b>" in md and "### Child" in md and "](figures/ev.png)" in md
    assert "- one <i>\n- two\n  - two.a\n  - two.b" in md
    assert "| a | b\\|c |" in md and "| p\\|q | z |" in md and "> line 2" in md
    assert (tmp_path / "rep" / "figures" / "ev.png").read_bytes() == png
    # Linked instead of embedded.
    linked = report.write(tmp_path / "rep2", embed_images=False).read_text()
    assert 'src="figures/ev.png"' in linked and "base64" not in linked


def test_figure_names_must_be_unique(tmp_path):
    png = plots.explained_variance_png([1.0])
    r = Report("T", [Section("a", [Figure("x.png", png)]), Section("b", [Figure("x.png", png)])])
    with pytest.raises(ValueError, match=r"figure names must be unique.*x.png"):
        r.write(tmp_path)


def test_run_report_collects_stage_sections(tmp_path, monkeypatch):
    # A run with no finished stage: an empty but valid report.
    assert build_run_report(tmp_path).sections == []
    assert [s for s, _ in BUILDERS] == ["findings", "pipeline", "interpret", "probe", "eval", "decontam"]
    # A later stage adds itself with one line.
    monkeypatch.setattr("skillray.report.run.BUILDERS", BUILDERS + [("probe", "tests.test_report:_probe_sections")])
    path = write_run_report(tmp_path)
    assert "Probe results" in path.read_text() and "Probe results" in (tmp_path / "report" / "report.md").read_text()


def test_pipeline_section_links_every_stage_output(write_corpus, tmp_path):
    from skillray.corpus import Record

    run = write_corpus([Record(id="a", text="x"), Record(id="b", text="y")])
    html = write_run_report(run).read_text()
    assert '<a href="../corpus/records.jsonl">corpus/records.jsonl</a>' in html
    md = (run / "report" / "report.md").read_text()
    assert "## Pipeline" in md and "| corpus | finished |" in md


def _probe_sections(run_dir):
    return [Section("Probe results", [Text(f"run {run_dir.name}")])]


# ----------------------------------------------------------------------------- findings on a real run


@pytest.fixture(scope="module")
def small_run(ray_cluster, tiny_model, tmp_path_factory):
    """Every stage of `skillray run` for real on the tiny model (generated corpus, Ray Data extraction,
    exact basis, offline interpret, both probes, full SFT in Ray Train's local mode, eval with a
    two-arm steering sweep and the fine-tuned model's eval); no factors.json is written by this fixture."""
    from typer.testing import CliRunner

    from skillray.cli.main import app

    run = tmp_path_factory.mktemp("findings") / "run"
    cfg = run.parent / "small.yaml"
    cfg.write_text(
        f"run_dir: {run}\n"
        f"model: {{name_or_path: {tiny_model.path}}}\n"
        "corpus: {source: generate, size_per_task: 3, tasks: [basic_arithmetic, syllogism, letter_counting]}\n"
        "extract: {max_tokens: 128, shard_size: 8, num_cpus_per_actor: 1}\n"
        "basis: {n_components: 3}\n"
        "interpret: {top_n: 2, n_heldout: 1}\n"
        "probe: {probes: [likelihood, accuracy], directions: [0, 1], n_dev: 4, max_tokens: 96, accuracy_n_dev: 4,"
        " accuracy_n_samples: 2, accuracy_max_new_tokens: 4, accuracy_tasks: [basic_arithmetic], num_threads: 1}\n"
        "select: {strategy: random, budget: 4}\n"
        "sft: {method: full, num_workers: 0, max_steps: 2, per_device_batch_size: 2, max_seq_len: 96,"
        " warmup_ratio: 0.0}\n"
        "eval: {benchmarks: [{name: procedural, tasks: [basic_arithmetic], size_per_task: 4}], n_samples: 2,"
        " temperature: 1.0, max_new_tokens: 4, chunk_size: 4, n_bootstrap: 50, num_actors: 0,"  # in-process: no actor start
        " sweep: {directions: [0], signs: [1, -1], alphas: [1.0]}}\n"
    )
    out = CliRunner().invoke(app, ["run", str(cfg)])
    assert out.exit_code == 0, out.output
    return run


def _factors_doc(n_records: int) -> dict:
    """An input in the contract's shape of `<run>/interpret/factors.json` (written by interpret)."""
    return {"format": "skillray.factors/1", "n_records": n_records,
            "factors": [{"name": "skill", "kind": "categorical", "levels": 3, "single_level": False},
                        {"name": "n_tokens", "kind": "numeric", "levels": None, "single_level": False},
                        {"name": "source", "kind": "categorical", "levels": 1, "single_level": True}],
            "directions": [
                {"direction": 0, "explained_variance_ratio": 0.5,
                 "associations": [{"factor": "skill", "measure": "eta2", "value": 0.31, "ci": [0.1, 0.5]},
                                  {"factor": "n_tokens", "measure": "spearman", "value": -0.93, "ci": [-0.97, -0.85]},
                                  {"factor": "source", "measure": "eta2", "value": None, "ci": None}],
                 "strongest": {"factor": "n_tokens", "measure": "spearman", "value": -0.93}, "flags": ["length"]},
                {"direction": 1, "explained_variance_ratio": 0.3,
                 "associations": [{"factor": "skill", "measure": "eta2", "value": 0.88, "ci": [0.8, 0.94]},
                                  {"factor": "n_tokens", "measure": "spearman", "value": 0.12, "ci": [-0.2, 0.4]}],
                 "strongest": {"factor": "skill", "measure": "eta2", "value": 0.88}, "flags": []}]}  # fmt: skip


def _findings_md(run) -> str:
    md = (run / "report" / "report.md").read_text()
    assert md.index("## Findings") < md.index("## Pipeline")  # the report opens with the findings
    return md[md.index("## Findings"): md.index("## Pipeline")]


def _says(lo: float, hi: float) -> str:
    return "includes 0" if lo <= 0 <= hi else "excludes 0"


def test_findings_open_the_report_with_every_interval(small_run):
    import json

    from skillray.eval.report import sft_vs_base
    from skillray.interpret.stage import read_labels
    from skillray.probe.stage import read_probe

    run = small_run
    (run / "interpret" / "factors.json").unlink(missing_ok=True)  # an older run: no factor associations
    write_run_report(run)
    f = _findings_md(run)
    html = (run / "report" / "index.html").read_text()
    assert html.index('id="findings"') < html.index('id="pipeline"')
    assert "no factor associations in this run" in f
    for d in read_labels(run / "interpret")["directions"]:
        assert f"d{d['direction']} \u201c{d['label']['short']}\u201d" in f
    # The probe's best pairs, each with its interval and the wording its numbers decide.
    doc = read_probe(run / "probe")
    assert f"ranked by the {doc['ranked_by']} probe" in f
    for r in doc["rows"][:3]:
        pair = f"d{r['direction']}{'+' if r['sign'] == 1 else '-'}"
        line = next(line for line in f.splitlines() if line.startswith(f"  - {pair}"))
        iv = f"[{r['accuracy_ci_low']:+.3f}, {r['accuracy_ci_high']:+.3f}]"
        assert f"delta Pass@1 {r['delta_pass_at_k']:+.3f}" in line
        assert f"interval {iv} {_says(r['accuracy_ci_low'], r['accuracy_ci_high'])}" in line
        assert "delta response log-likelihood" in line
    # The fine-tuned model against the base, from the existing paired bootstrap.
    (sft,) = [p for p in (run / "sft").iterdir() if (p / "manifest.json").is_file()]
    delta = sft_vs_base(run / "eval", sft / "eval")
    r = delta[delta["k"] == 1].iloc[0]
    line = next(line for line in f.splitlines() if line.startswith(f"  - sft/{sft.name} on procedural"))
    assert f"difference {r['delta']:+.3f} over 4 problems" in line
    assert f"the 95% interval [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] {_says(r['ci_low'], r['ci_high'])}" in line
    if r["ci_low"] <= 0 <= r["ci_high"]:
        assert "no detectable difference" in line
    assert ("(both 0: too hard" in line) == (r["pass_at_k"] == r["base_pass_at_k"] == 0)
    # Each steering arm against the unsteered model.
    sweep = json.loads((run / "eval" / "sweep" / "results.json").read_text())["results"]
    arms = [s for s in sweep if s["k"] == 1]
    assert sorted(s["arm"] for s in arms) == ["d0+1-residual", "d0-1-residual"]
    for s in arms:
        line = next(line for line in f.splitlines() if line.startswith(f"  - {s['arm']}"))
        assert f"Pass@1 {s['pass_at_k']:.3f} vs unsteered {s['base_pass_at_k']:.3f}" in line
        assert f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}] {_says(s['ci_low'], s['ci_high'])}" in line
        assert ("(both 0: too hard" in line) == (s["pass_at_k"] == s["base_pass_at_k"] == 0)
    base = json.loads((run / "eval" / "results.json").read_text())["results"][0]
    assert f"Base model: Pass@1 on procedural {base['pass_at_k']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}]" in f
    # The probe's ranked table is a section of the report (it was only in probe/probe.md).
    md = (run / "report" / "report.md").read_text()
    assert "## Probe" in md and "| rank | pair | label | delta loglik | se | likelihood rank | delta Pass@k |" in md
    first = doc["rows"][0]
    assert f"| 0 | d{first['direction']}{'+' if first['sign'] == 1 else '-'} |" in md and "Agreement of the likelihood" in md


def test_findings_show_factor_associations_and_flags(small_run):
    from skillray.interpret.stage import read_labels

    run = small_run
    labels = read_labels(run / "interpret")
    (run / "interpret" / "factors.json").write_text(__import__("json").dumps(_factors_doc(labels["n_rows"])))
    try:
        write_run_report(run)
        f = _findings_md(run)
    finally:
        (run / "interpret" / "factors.json").unlink()
    short = {d["direction"]: d["label"]["short"] for d in labels["directions"]}
    assert f"factors over {labels['n_rows']} records; with one level only (no association): source" in f
    d0 = next(line for line in f.splitlines() if line.startswith("  - d0 "))
    assert f"d0 \u201c{short[0]}\u201d" in d0
    assert "aligns most with n_tokens (Spearman -0.93 [-0.97, -0.85]); flagged: mostly length" in d0
    d1 = next(line for line in f.splitlines() if line.startswith("  - d1 "))
    assert "aligns most with skill (eta² 0.88 [0.80, 0.94])" in d1 and "flagged" not in d1
    d2 = next(line for line in f.splitlines() if line.startswith("  - d2 "))
    assert "no factor associations for this direction" in d2


def test_findings_say_what_is_missing(small_run, tiny_model, tmp_path):
    import shutil

    from scipy import stats

    from skillray.config import ModelConfig, ProbeConfig
    from skillray.probe import read_probe, run_probe

    run = tmp_path / "copy"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("model", "checkpoints"))
    shutil.rmtree(run / "eval" / "sweep")
    (sft,) = [p for p in (run / "sft").iterdir() if (p / "manifest.json").is_file()]
    shutil.rmtree(sft / "eval")
    write_run_report(run)
    f = _findings_md(run)
    assert "Steering vs unsteered: missing: the config sets eval.sweep but eval/sweep has no finished results" in f
    assert f"sft/{sft.name}: missing: no finished eval of the fine-tuned model" in f
    # A factors file from another version is named, not misread.
    (run / "interpret" / "factors.json").write_text('{"format": "skillray.factors/0"}')
    write_run_report(run)
    assert "factor associations not shown: " in _findings_md(run) and "expected 'skillray.factors/1'" in _findings_md(run)
    # Without a config that asks for them, their absence is plain.
    (run / "config.yaml").unlink()
    shutil.rmtree(run / "sft")
    write_run_report(run)
    f = _findings_md(run)
    assert "no steering sweep in this run" in f and "no fine-tuned model in this run" in f
    # A likelihood-only probe: its best pairs carry a t interval from the paired per-record standard error.
    run_probe(run, ProbeConfig(probes=["likelihood"], directions=[0, 1], n_dev=4, max_tokens=96),
              ModelConfig(name_or_path=str(tiny_model.path)), force=True)  # fmt: skip
    write_run_report(run)
    f = _findings_md(run)
    assert "ranked by the likelihood probe" in f and "likelihood vs accuracy" not in f and "delta Pass@1" not in f
    r = read_probe(run / "probe")["rows"][0]
    h = stats.t.ppf(0.975, 3) * r["delta_loglik_se"]
    lo, hi = r["delta_loglik"] - h, r["delta_loglik"] + h
    assert f"delta response log-likelihood {r['delta_loglik']:+.4f} over 4 records: " in f
    assert f"the 95% interval [{lo:+.3f}, {hi:+.3f}] {_says(lo, hi)}" in f
    md = (run / "report" / "report.md").read_text()
    assert "| rank | pair | label | delta loglik | se | likelihood rank |\n" in md


def test_interval_wording_from_the_paired_bootstrap():
    """An arm right on every problem where the base is wrong: the paired interval excludes 0; equal arms: includes 0."""
    import pandas as pd

    from skillray.eval.tables import paired_delta_table
    from skillray.report.findings import interval_phrase

    rows = [{"arm": arm, "benchmark": "b", "problem_id": f"p{i}", "n": 2, "c": c, "failed": False}
            for i in range(20) for arm, c in (("base", 0), ("up", 2), ("same", 0), ("down", 0))]
    rows = [r if not (r["arm"] in ("base", "same") and int(r["problem_id"][1:]) < 10) else {**r, "c": 2} for r in rows]
    t = paired_delta_table(pd.DataFrame(rows), "base", [1], 200, 0.95, 0).set_index("arm")
    assert interval_phrase(t.loc["up", "ci_low"], t.loc["up", "ci_high"]).startswith("higher: the 95% interval [+")
    assert interval_phrase(t.loc["same", "ci_low"], t.loc["same", "ci_high"]) == (
        "no detectable difference: the 95% interval [+0.000, +0.000] includes 0")
    assert interval_phrase(t.loc["down", "ci_low"], t.loc["down", "ci_high"]).startswith("lower: ")
    assert interval_phrase(-0.05, 0.03) == "no detectable difference: the 95% interval [-0.050, +0.030] includes 0"
