"""The report document (HTML + Markdown), its plots, and the run report's section builders."""

from __future__ import annotations

import numpy as np
import pytest

from skillray.report import BUILDERS, Figure, Report, Section, Snippets, Table, Text, build_run_report, write_run_report
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
    sec = Section("Overview <b>", [Text("x < y & <script>alert(1)</script>"), Table(["a", "b|c"], [[1.234567, None], ["p|q", "z"]])])
    sec.children.append(Section("Child", [Figure("ev.png", png, "variance"), Snippets([("id=1", "<i>raw</i>\nline 2")], title="Top")]))
    report = Report("T", intro=["hello"])
    report.add(sec)
    out = report.write(tmp_path / "rep")
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;i&gt;raw&lt;/i&gt;" in html
    assert 'id="overview-b"' in html and "<h3>Child</h3>" in html and "1.235" in html
    assert html.count("data:image/png;base64,") == 1
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Overview <b>" in md and "### Child" in md and "](figures/ev.png)" in md
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
    assert [s for s, _ in BUILDERS] == ["pipeline", "interpret", "eval"]
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
