"""Rendering report.json as a self-contained HTML page, a short Markdown file and SVG figures.

The renderer reads only report.json (never models): ``load_report`` checks the file,
``render_report`` writes ``report.html``, ``report.md`` and ``figures/*.svg``.

    >>> from fmaudit.report import load_report, render_report
    >>> paths = render_report(load_report("out/report.json"), "out")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from fmaudit.report.load import SCHEMA_VERSION, check_report, load_report

__all__ = ["SCHEMA_VERSION", "check_report", "load_report", "render_report", "summary_markdown"]


def __getattr__(name: str) -> Any:
    # The renderer (matplotlib) is imported on first use only: the gate reads reports through
    # fmaudit.report.load and must stay light.
    if name in ("render_report", "summary_markdown"):
        from fmaudit.report import render

        return getattr(render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
