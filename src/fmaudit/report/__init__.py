"""Rendering report.json as a self-contained HTML page, a short Markdown file and SVG figures.

The renderer reads only report.json (never models): ``load_report`` checks the file,
``render_report`` writes ``report.html``, ``report.md`` and ``figures/*.svg``.

    >>> from fmaudit.report import load_report, render_report
    >>> paths = render_report(load_report("out/report.json"), "out")  # doctest: +SKIP
"""

from fmaudit.report.load import SCHEMA_VERSION, check_report, load_report
from fmaudit.report.render import render_report, summary_markdown

__all__ = ["SCHEMA_VERSION", "check_report", "load_report", "render_report", "summary_markdown"]
