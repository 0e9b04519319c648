"""report.json (a dict) -> report.html, report.md and figures/*.svg, each written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fmaudit.errors import bad_input
from fmaudit.io import interrupts_deferred, replace_path
from fmaudit.report.html import render_html
from fmaudit.report.load import check_report
from fmaudit.report.markdown import render_blocks, render_markdown
from fmaudit.report.sections import build_document, ensembles_of, summary_section

HTML_NAME = "report.html"
MD_NAME = "report.md"
FIGURES_DIR = "figures"


def check_targets(out_dir: Path, names: tuple[tuple[str, bool], ...] = (
        (FIGURES_DIR, True), (MD_NAME, False), (HTML_NAME, False)), what: str | None = None
                  ) -> None:
    """Refuse to replace someone's file by one of our folders (or a folder by one of our files):
    all ``(name, is_folder)`` targets are checked before any is written, so a refusal leaves
    ``out_dir`` as it was."""
    for name, want_dir in names:
        target = out_dir / name
        if target.exists() and target.is_dir() != want_dir:
            kind = "folder" if target.is_dir() else "file"
            raise bad_input(what or str(out_dir), f"{name} is a {kind} here",
                            "move it away: the report writes its own")


def render_report(report: dict[str, Any], out_dir: str | os.PathLike[str], *,
                  source: str = "report.json") -> dict[str, Path]:
    """Render ``report`` into ``out_dir``; return ``{relative name: written path}``.

    Keys are ``"report.html"``, ``"report.md"`` and ``"figures/<name>.svg"`` per figure. The
    figures folder is replaced as a whole, so a re-render leaves no stale figure behind.
    Re-rendering the same report gives byte-identical files.

    Raises:
        FmauditError: ``report`` is not a schema_version 1 report (``source`` names it in the
            message), or ``out_dir`` cannot be written.
    """
    report = check_report(report, source)
    out_dir = Path(out_dir)
    doc = build_document(report)
    page = render_html(doc)
    markdown = render_markdown(doc)
    written: dict[str, Path] = {}
    check_targets(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".render.*.tmp"):  # staging left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        # the whole set is written aside, then swapped in with interrupts deferred: the page,
        # the Markdown and the figures they link to are always of one render
        with tempfile.TemporaryDirectory(prefix=".render.", suffix=".tmp", dir=out_dir) as tmp:
            staging = Path(tmp)
            (staging / FIGURES_DIR).mkdir()
            for fig in doc.figures():
                (staging / FIGURES_DIR / f"{fig.name}.svg").write_text(fig.svg, encoding="utf-8")
                written[f"{FIGURES_DIR}/{fig.name}.svg"] = out_dir / FIGURES_DIR / f"{fig.name}.svg"
            (staging / MD_NAME).write_text(markdown, encoding="utf-8")
            (staging / HTML_NAME).write_text(page, encoding="utf-8")
            with interrupts_deferred():
                for name in (FIGURES_DIR, MD_NAME, HTML_NAME):
                    replace_path(staging / name, out_dir / name)
    except OSError as exc:
        raise bad_input(str(out_dir), f"cannot write the report ({exc.strerror or exc})",
                        "choose a writable --out folder") from None
    written[MD_NAME] = out_dir / MD_NAME
    written[HTML_NAME] = out_dir / HTML_NAME
    return written


def summary_markdown(report: dict[str, Any], *, source: str = "report.json") -> str:
    """Only the summary table (and the gate verdict) as GitHub Markdown, without figures.

    For a README or ``$GITHUB_STEP_SUMMARY``; the same table ``report.md`` opens with.
    """
    report = check_report(report, source)
    return render_blocks(summary_section(report, ensembles_of(report)).blocks) + "\n"
