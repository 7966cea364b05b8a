"""Run reports: sections of text, tables, figures and snippets, rendered to HTML and Markdown.

:mod:`skillray.report.document` holds the blocks and the renderer, :mod:`skillray.report.plots`
the matplotlib (Agg) figures, :mod:`skillray.report.run` the per-stage section builders,
:mod:`skillray.report.findings` the opening summary in words.
"""

from skillray.report.document import Bullets, Figure, Links, Report, Section, Snippets, Table, Text
from skillray.report.run import BUILDERS, build_run_report, write_run_report

__all__ = ["BUILDERS", "Bullets", "Figure", "Links", "Report", "Section", "Snippets", "Table", "Text", "build_run_report",
           "write_run_report"]
