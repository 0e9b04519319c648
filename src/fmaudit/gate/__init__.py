"""The gate: a policy (TOML) applied to report.json, giving verdicts and an exit code.

Pipeline: ``load_policy`` (validate before any compute) -> ``run_gate`` (report dict [+ baseline]
-> :class:`GateResult`) -> ``render`` / ``write_junit`` (text, Markdown, JSON, JUnit XML).

>>> policy = load_policy(default_policy_path())           # doctest: +SKIP
>>> result = run_gate(report, policy.path, policy=policy)  # doctest: +SKIP
>>> report["gate"] = result.to_dict(); exit_code = result.exit_code  # doctest: +SKIP
"""

from fmaudit.gate.evaluate import CheckResult, GateResult, require_baseline, run_gate
from fmaudit.gate.formats import OutputFormat, junit_xml, render, write_junit
from fmaudit.gate.paths import compact_names, metric_names, resolve
from fmaudit.gate.policy import Check, Policy, default_policy_path, load_policy, parse_policy
from fmaudit.report.load import check_report, load_report  # the one report.json reader

__all__ = [
    "Check",
    "CheckResult",
    "GateResult",
    "OutputFormat",
    "Policy",
    "check_report",
    "compact_names",
    "default_policy_path",
    "junit_xml",
    "load_policy",
    "load_report",
    "metric_names",
    "parse_policy",
    "render",
    "require_baseline",
    "resolve",
    "run_gate",
    "write_junit",
]
