"""``fmaudit gate``: check a report.json against a policy; exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

from pathlib import Path

import click

# Light imports only (stdlib + click): this module is imported only when `gate` runs, but the
# gate never needs torch.
from fmaudit.gate.formats import OutputFormat


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("report", type=click.Path(path_type=Path), metavar="REPORT")
@click.option("--policy", type=click.Path(path_type=Path), default=None, metavar="POLICY.toml",
              help="Gate policy (TOML). Default: the shipped recipes/gate-default.toml.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              metavar="OLD/report.json",
              help="Report of the last released model, for max_increase / max_decrease.")
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="Also write JUnit XML (one testcase per check) to FILE.")
@click.option("--format", "fmt", type=click.Choice([f.value for f in OutputFormat]),
              default=OutputFormat.TEXT.value, show_default=True,
              help="stdout format: text table, GitHub Markdown, or JSON.")
def gate(report: Path, policy: Path | None, baseline: Path | None, junit: Path | None,
         fmt: str) -> int:
    """Check REPORT (a report.json, or the folder holding it) against a policy.

    Exit 0 when every check passes (skipped, not-applicable checks do not fail), 1 when any
    fails, 2 on bad input: an unreadable report, a metric the report lacks (the valid names are
    listed), a malformed bound, an unknown ensemble, max_increase without --baseline.
    """
    from fmaudit.gate import (
        default_policy_path,
        load_policy,
        load_report,
        render,
        require_baseline,
        run_gate,
        write_junit,
    )

    # The cheap checks first: policy and its needs, then the reports.
    pol = load_policy(policy if policy is not None else default_policy_path())
    require_baseline(pol, baseline is not None)
    if baseline is not None and not pol.needs_baseline:
        from fmaudit.progress import warn

        warn(f"--baseline {baseline}: no check of {pol.path} uses max_increase or max_decrease; "
             "the baseline is not compared")
    report_obj = load_report(report)
    baseline_obj = load_report(baseline) if baseline is not None else None
    result = run_gate(report_obj, pol.path, baseline_obj, policy=pol,
                      report_name=str(_report_file(report)),
                      baseline_name=str(_report_file(baseline)) if baseline else "baseline")
    if junit is not None:
        write_junit(result, junit)
    click.echo(render(result, OutputFormat(fmt)))
    return result.exit_code


def _report_file(path: Path) -> Path:
    return path / "report.json" if path.is_dir() else path
