"""``fmaudit gate``: check a report.json against a policy; exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

import click

# Light imports only (stdlib + click): this module is imported only when `gate` runs, but the
# gate never needs torch.
from fmaudit.gate.formats import OutputFormat


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
# Paths arrive as str, not Path: Path("") is ".", and an empty path (an unset variable in a CI
# script) must be refused, not read as ./report.json or written onto ".".
@click.argument("report", type=click.Path(), metavar="REPORT")
@click.option("--policy", type=click.Path(), default=None, metavar="POLICY.toml",
              help="Gate policy (TOML). Default: the shipped recipes/gate-default.toml.")
@click.option("--baseline", type=click.Path(), default=None,
              metavar="OLD/report.json",
              help="Report of the last released model, for max_increase / max_decrease.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Also write JUnit XML (one testcase per check) to FILE.")
@click.option("--format", "fmt", type=click.Choice([f.value for f in OutputFormat]),
              default=OutputFormat.TEXT.value, show_default=True,
              help="stdout format: text table, GitHub Markdown, or JSON.")
def gate(report: str, policy: str | None, baseline: str | None, junit: str | None,
         fmt: str) -> int:
    """Check REPORT (a report.json, or the folder holding it) against a policy.

    Exit 0 when every check passes (skipped, not-applicable checks do not fail), 1 when any
    fails, 2 on bad input: an unreadable or malformed report or baseline, a metric the report
    or the baseline lacks (the valid names are listed; missing = "skip" skips instead), a
    malformed bound, an unknown ensemble, max_increase without --baseline, an unwritable --junit.
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
    from fmaudit.report.load import input_path, report_path
    from fmaudit.report.outputs import output_file, refuse_inputs

    # The cheap checks first: the paths, the policy and its needs, then the reports.
    report_file = report_path(input_path(report, "REPORT"))
    base_file = report_path(input_path(baseline, "--baseline")) if baseline is not None else None
    junit_path = output_file(junit, "--junit", "gate-junit.xml") if junit is not None else None
    pol = load_policy(input_path(policy, "--policy") if policy is not None
                      else default_policy_path())
    if junit_path is not None:
        refuse_inputs(junit_path, "--junit", {"the report": report_file,
                                              "the baseline": base_file, "the policy": pol.path})
    require_baseline(pol, base_file is not None)
    if base_file is not None and not pol.needs_baseline:
        from fmaudit.progress import warn

        warn(f"--baseline {baseline}: no check of {pol.path} uses max_increase or max_decrease; "
             "the baseline is not compared")
    report_obj = load_report(report_file)
    baseline_obj = load_report(base_file) if base_file is not None else None
    result = run_gate(report_obj, pol.path, baseline_obj, policy=pol,
                      report_name=str(report_file),
                      baseline_name=str(base_file) if base_file is not None else "baseline")
    if junit_path is not None:
        write_junit(result, junit_path, "--junit")
    click.echo(render(result, OutputFormat(fmt)))
    return result.exit_code
