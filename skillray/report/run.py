"""The run report: ``<run>/report/index.html`` + ``report.md``, one group of sections per finished stage.

Each stage that wants to show something has a section builder, ``builder(run_dir) -> list[Section]``
(empty when its output is not there yet), named in :data:`BUILDERS` by import path so that no
stage module is imported unless the report is built. A stage calls :func:`write_run_report`
when it finishes; the whole report is rebuilt from the artifacts, so reruns and later stages
never leave it stale. To add a stage: write its builder and append one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from skillray.report.document import Report, Section

BUILDERS: list[tuple[str, str]] = [
    ("findings", "skillray.report.findings:sections"),  # first: the run's results in words
    ("pipeline", "skillray.pipeline:report_sections"),
    ("interpret", "skillray.interpret.report:sections"),
    ("probe", "skillray.probe.report:sections"),
    ("eval", "skillray.eval.report:sections"),
    ("decontam", "skillray.report.decontam:sections"),
]


def build_run_report(run_dir: str | Path) -> Report:
    """Collect every builder's sections for ``run_dir`` into one Report."""
    run_dir = Path(run_dir)
    report = Report(f"skillray run report: {run_dir.name}")
    report.intro.append(f"Run directory: {run_dir.resolve()}")
    for stage, path in BUILDERS:
        mod, _, attr = path.partition(":")
        builder = getattr(importlib.import_module(mod), attr)
        for sec in builder(run_dir) or []:
            if not isinstance(sec, Section):
                raise TypeError(f"report builder of stage {stage!r} returned {type(sec).__name__}, expected Section")
            report.add(sec)
    return report


def write_run_report(run_dir: str | Path, embed_images: bool = True) -> Path:
    """Rebuild ``<run>/report/`` from the run's artifacts; returns the path of index.html."""
    return build_run_report(run_dir).write(Path(run_dir) / "report", embed_images=embed_images)
