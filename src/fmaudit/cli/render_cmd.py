"""``fmaudit render REPORT_JSON [--out DIR]``: re-render report.html / report.md, no recomputing."""

from __future__ import annotations

import click


@click.command("render", short_help="Re-render report.html and report.md from a report.json.")
# Paths arrive as str, not Path: Path("") is ".", and an empty path (an unset variable in a
# script) must be refused, not read as ./report.json or written into ".".
@click.argument("report_json", type=click.Path(dir_okay=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              default=None, help="Folder for report.html, report.md and figures/ "
              "[default: the folder of REPORT_JSON].")
def render(report_json: str, out_dir: str | None) -> None:
    """Render REPORT_JSON (written by `fmaudit report`) as report.html, report.md and figures.

    REPORT_JSON may be the folder holding report.json. Reads only the JSON: no model is loaded
    and nothing is recomputed. Prints the written paths.
    """
    from fmaudit.errors import FmauditError
    from fmaudit.io import writable_dir
    from fmaudit.report import load_report, render_report
    from fmaudit.report.load import input_path, report_path

    source = report_path(input_path(report_json, "REPORT_JSON"))
    if out_dir is not None and not out_dir.strip():
        raise FmauditError("--out: empty path (name an output folder)")
    report = load_report(source)  # the gate's validator: render is exactly as strict
    # checked (and created) only once the report is known good: a bad report leaves nothing
    out = writable_dir(out_dir if out_dir is not None else source.parent,
                       "--out" if out_dir is not None else "default --out")
    written = render_report(report, out, source=str(source))
    for name in ("report.html", "report.md"):
        click.echo(str(written[name]))
