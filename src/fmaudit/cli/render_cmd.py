"""``fmaudit render REPORT_JSON [--out DIR]``: re-render report.html / report.md, no recomputing."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("render", short_help="Re-render report.html and report.md from a report.json.")
@click.argument("report_json", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Folder for report.html, report.md and figures/ "
              "[default: the folder of REPORT_JSON].")
def render(report_json: Path, out_dir: Path | None) -> None:
    """Render REPORT_JSON (written by `fmaudit report`) as report.html, report.md and figures.

    Reads only the JSON: no model is loaded and nothing is recomputed. Prints the written paths.
    """
    from fmaudit.report import load_report, render_report

    report = load_report(report_json)
    written = render_report(report, out_dir if out_dir is not None else report_json.parent,
                            source=str(report_json))
    for name in ("report.html", "report.md"):
        click.echo(str(written[name]))
