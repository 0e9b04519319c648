"""Verdicts: a policy applied to report.json (and optionally a baseline report.json).

Each ``[[check]]`` becomes one row per gated ensemble for its ``min``/``max`` bounds, and one more
row for ``max_increase``/``max_decrease`` against the baseline. A row is:

* ``pass``  the value lies within the bound (bounds are inclusive, to a 1e-9 relative tolerance,
  so ``0.9 + 0.02`` is not refused for ``0.92`` over a floating-point rounding);
* ``fail``  it does not;
* ``skip``  not applicable: the value is null in the report or the baseline (e.g. disagreement
  with one member), the ``relative_to`` denominator is null or 0, an implicitly gated ensemble is
  new since the baseline, or the metric is absent (from the report or the baseline) and the check
  says ``missing = "skip"``.

The gate passes when no row fails; skipped rows neither pass nor fail and are reported as such.
Anything the user must fix (a malformed report or baseline, an unknown metric or ensemble, a
metric the baseline lacks under the default ``missing = "error"``, a stat the value does not
have, a missing baseline) raises :class:`FmauditError` (exit 2) naming the policy check and the
file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fmaudit.errors import EXIT_GATE_FAILED, EXIT_OK, FmauditError
from fmaudit.gate.paths import PathError, compact_names, is_number, is_stat, metric_names, resolve
from fmaudit.gate.policy import Check, Policy, load_policy
from fmaudit.report.load import check_report  # the one report.json validator (gate and render)

Status = Literal["pass", "fail", "skip"]

_REL_TOL = 1e-9
_ABS_TOL = 1e-12


@dataclass(frozen=True)
class CheckResult:
    """One row of the gate: a check of one metric of one ensemble against one bound.

    ``bound`` is the policy's bound as text (stable across runs, used as the JUnit test name);
    ``min``/``max`` are the effective numeric limits on ``value`` (for a baseline row: the
    baseline value minus ``max_decrease`` / plus ``max_increase``).
    """

    check: int  # 1-based index of the [[check]] in the policy
    metric: str
    ensemble: str
    stat: str | None  # None: the metric is a plain number
    value: float | None
    bound: str
    status: Status
    message: str
    min: float | None = None
    max: float | None = None
    baseline: float | None = None
    relative_to: str | None = None

    @property
    def passed(self) -> bool | None:
        """True / False, or None when the check was skipped as not applicable."""
        return None if self.status == "skip" else self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "ensemble": self.ensemble, "stat": self.stat,
                "value": self.value, "bound": self.bound, "passed": self.passed,
                "status": self.status, "message": self.message, "check": self.check,
                "min": self.min, "max": self.max, "baseline": self.baseline,
                "relative_to": self.relative_to}


@dataclass(frozen=True)
class GateResult:
    """All rows of a gate run; ``to_dict()`` is the ``gate`` object of report.json."""

    policy: str
    checks: list[CheckResult] = field(default_factory=list)
    report: str | None = None
    baseline: str | None = None

    def count(self, status: Status) -> int:
        return sum(c.status == status for c in self.checks)

    @property
    def passed(self) -> bool:
        """No row failed (skipped rows do not fail the gate)."""
        return self.count("fail") == 0

    @property
    def exit_code(self) -> int:
        """0 when the gate passed, 1 when any check failed."""
        return EXIT_OK if self.passed else EXIT_GATE_FAILED

    def counts_text(self) -> str:
        """``5 passed, 1 failed, 2 skipped (not applicable) of 8 checks``."""
        n, f, s = len(self.checks), self.count("fail"), self.count("skip")
        text = f"{n - f - s} passed, {f} failed"
        if s:
            text += f", {s} skipped (not applicable)"
        return text + f" of {n} checks"

    def summary(self) -> str:
        """One line: the verdict and the counts."""
        return f"gate {'PASSED' if self.passed else 'FAILED'}: {self.counts_text()}"

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "passed": self.passed,
                "counts": {"checks": len(self.checks), "passed": self.count("pass"),
                           "failed": self.count("fail"), "skipped": self.count("skip")},
                "report": self.report, "baseline": self.baseline,
                "checks": [c.to_dict() for c in self.checks]}


# --- values -------------------------------------------------------------------------------------

class _NotApplicable(Exception):
    """The value exists in the schema but is null here: the row is skipped."""


class _StatError(Exception):
    """The value cannot give the asked stat (or is malformed): bad input, exit 2."""


class _NotGateable(Exception):
    """The path resolves, but to something that is neither a number nor a statistic."""


class _Missing(Exception):
    """The metric is not in ``ensemble`` (a gated or a relative_to one).

    ``present``: the path resolves, but to a table or a list. ``missing = "skip"`` never covers
    that case: it is a wrong metric name or a malformed file, never an analysis that was not run.
    """

    def __init__(self, ensemble: str, problem: str, present: bool = False) -> None:
        super().__init__(problem)
        self.ensemble = ensemble
        self.present = present


def _unknown_metric(where: str, check: Check, ens_name: str, ens: Mapping[str, Any],
                    problem: str, report_name: str, fix: str = "") -> FmauditError:
    names = metric_names(ens)
    close = difflib.get_close_matches(check.metric, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return FmauditError(f"{where}: metric {check.metric!r} not found in ensemble {ens_name!r} of "
                        f"{report_name}: {problem} ({fix}{hint}valid names: "
                        f"{', '.join(compact_names(ens))})")


def _kind(node: Any) -> str:
    if isinstance(node, Mapping):
        return "table"
    if isinstance(node, list):
        return "list"
    return type(node).__name__


def _stat_value(node: Any, check: Check, ens_name: str) -> tuple[float, str | None]:
    """The number ``check`` reads from a resolved node, and the stat label for output.

    Plain number: itself. Statistic: its ``mean``/``std`` field, or max/min over ``members``.
    Raises _NotGateable when the node is not gateable, _StatError for a stat it does not have,
    _NotApplicable for null.
    """
    metric = check.metric
    if node is None:
        raise _NotApplicable(f"{metric} is null in ensemble {ens_name!r}")
    if is_number(node):
        if check.stat not in (None, "mean"):
            raise _StatError(f"{metric} is a single number, so stat {check.stat!r} does not "
                             "apply (remove stat)")
        return float(node), None
    if not is_stat(node):
        raise _NotGateable(f"'{metric}' is a {_kind(node)}, not a number or a statistic")
    stat = check.stat or "mean"
    if stat in ("mean", "std"):
        value = node[stat]
        if value is None:
            raise _NotApplicable(f"{metric} {stat} is null in ensemble {ens_name!r}")
        if not is_number(value):
            raise _StatError(f"{metric} {stat} is {value!r} in ensemble {ens_name!r}, not a "
                             "number (regenerate the report)")
        return float(value), stat
    members = node.get("members")
    if not isinstance(members, list):
        raise _StatError(f"{metric} is a statistic over member pairs with no per-member values, "
                         f"so stat {stat!r} does not apply (use stat = \"mean\" or \"std\")")
    values = [float(m) for m in members if is_number(m)]
    if not values:
        raise _NotApplicable(f"{metric} has no member values in ensemble {ens_name!r}")
    return (max(values) if stat == "max" else min(values)), stat


def _value(ensembles: Mapping[str, Mapping[str, Any]], ens_name: str,
           check: Check) -> tuple[float, str | None]:
    """``check``'s value for one ensemble (a ratio when ``relative_to`` is set).

    Raises _Missing (naming the ensemble at fault), _StatError or _NotApplicable.
    """
    try:
        value, stat = _stat_value(resolve(ensembles[ens_name], check.metric), check, ens_name)
    except PathError as exc:
        raise _Missing(ens_name, str(exc)) from None
    except _NotGateable as exc:
        raise _Missing(ens_name, str(exc), present=True) from None
    if check.relative_to is None:
        return value, stat
    ref = check.relative_to
    try:
        denom, _ = _stat_value(resolve(ensembles[ref], check.metric), check, ref)
    except PathError as exc:
        raise _Missing(ref, str(exc)) from None
    except _NotGateable as exc:
        raise _Missing(ref, str(exc), present=True) from None
    except _NotApplicable as exc:
        raise _NotApplicable(f"relative_to: {exc}") from None
    if denom == 0:
        raise _NotApplicable(f"{check.metric} is 0 in {ref!r}, so the ratio is undefined")
    ratio = value / denom
    if not math.isfinite(ratio):
        raise _NotApplicable(f"the ratio to {ref!r} is not finite")
    return ratio, stat


# --- bounds -------------------------------------------------------------------------------------

def _le(a: float, b: float) -> bool:
    """a <= b, forgiving floating-point rounding (bounds are inclusive)."""
    return a <= b or math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)


def _within(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or _le(lo, value)) and (hi is None or _le(value, hi))


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo:g}, {hi:g}]"
    return f"<= {hi:g}" if hi is not None else f">= {lo:g}"


def _range_bound(check: Check) -> str:
    text = _range_text(check.min, check.max)
    return f"ratio to {check.relative_to} {text}" if check.relative_to else text


def _baseline_bound(check: Check) -> str:
    inc, dec = check.max_increase, check.max_decrease
    if inc is not None and dec is not None:
        text = f"change in [-{dec:g}, +{inc:g}] vs baseline"
    elif inc is not None:
        text = f"increase <= {inc:g} vs baseline"
    else:
        text = f"decrease <= {dec:g} vs baseline"
    return f"ratio to {check.relative_to}: {text}" if check.relative_to else text


def _range_row(check: Check, ens_name: str, value: float | None, stat: str | None,
               why: str | None) -> CheckResult:
    common = {"check": check.index, "metric": check.metric, "ensemble": ens_name, "stat": stat,
              "bound": _range_bound(check), "min": check.min, "max": check.max,
              "relative_to": check.relative_to}
    if value is None:
        return CheckResult(value=None, status="skip", message=f"not applicable: {why}", **common)
    shown = f"ratio {value:.4g}" if check.relative_to else f"{value:.4g}"
    if _within(value, check.min, check.max):
        return CheckResult(value=value, status="pass",
                           message=f"{shown} {_range_text(check.min, check.max)}", **common)
    if check.max is not None and not _le(value, check.max):
        msg = f"{shown} > max {check.max:g}"
    else:
        msg = f"{shown} < min {check.min:g}"
    return CheckResult(value=value, status="fail", message=msg, **common)


def _baseline_row(check: Check, ens_name: str, value: float | None, stat: str | None,
                  why: str | None, base: float | None, base_why: str | None) -> CheckResult:
    lo = base - check.max_decrease if base is not None and check.max_decrease is not None else None
    hi = base + check.max_increase if base is not None and check.max_increase is not None else None
    common = {"check": check.index, "metric": check.metric, "ensemble": ens_name, "stat": stat,
              "bound": _baseline_bound(check), "min": lo, "max": hi, "baseline": base,
              "relative_to": check.relative_to}
    if value is None or base is None:
        reason = why if value is None else f"baseline: {base_why}"
        return CheckResult(value=value, status="skip", message=f"not applicable: {reason}",
                           **common)
    msg = f"{value:.4g} vs baseline {base:.4g}: change {value - base:+.4g}"
    if _within(value, lo, hi):
        return CheckResult(value=value, status="pass", message=msg, **common)
    allowed = (f"allowed +{check.max_increase:g}" if hi is not None and not _le(value, hi)
               else f"allowed -{check.max_decrease:g}")
    return CheckResult(value=value, status="fail", message=f"{msg} ({allowed})", **common)


# --- the gate -----------------------------------------------------------------------------------

def require_baseline(policy: Policy, baseline_given: bool) -> None:
    """Raise :class:`FmauditError` when a check compares against a baseline none was given for.

    Cheap: call it before spending compute (``fmaudit report --gate``).
    """
    if baseline_given:
        return
    for check in policy.checks:
        if check.needs_baseline:
            key = "max_increase" if check.max_increase is not None else "max_decrease"
            raise FmauditError(f"{policy.path}: check {check.index} uses {key}, which compares "
                               "against a baseline (pass --baseline OLD/report.json, or remove "
                               f"{key})")


def _targets(check: Check, present: list[str], where: str, report_name: str) -> list[str]:
    listing = ", ".join(present)
    if check.relative_to is not None and check.relative_to not in present:
        raise FmauditError(f"{where}: relative_to {check.relative_to!r} is not an ensemble of "
                           f"{report_name} (present: {listing})")
    if check.ensembles is None:
        targets = [e for e in present if e != check.relative_to]
        if not targets:
            raise FmauditError(f"{where}: {report_name} has no ensemble besides relative_to "
                               f"{check.relative_to!r} (audit another ensemble, or drop "
                               "relative_to)")
        return targets
    for name in check.ensembles:
        if name not in present:
            raise FmauditError(f"{where}: ensemble {name!r} is not in {report_name} (present: "
                               f"{listing})")
    return list(check.ensembles)


def _try_value(ensembles: Mapping[str, Mapping[str, Any]], ens_name: str, check: Check,
               where: str, report_name: str) -> tuple[float | None, str | None, str | None]:
    """(value, stat label, reason it is not applicable); bad input raises FmauditError."""
    try:
        value, stat = _value(ensembles, ens_name, check)
    except _NotApplicable as exc:
        return None, _default_stat(ensembles[ens_name], check), str(exc)
    except _Missing as exc:
        if check.missing == "skip" and not exc.present:
            return None, _missing_stat(ensembles, check), (
                f"{check.metric} is not in ensemble {exc.ensemble!r} (missing = \"skip\"): {exc}")
        raise _unknown_metric(where, check, exc.ensemble, ensembles[exc.ensemble], str(exc),
                              report_name) from None
    except _StatError as exc:
        raise FmauditError(f"{where}: {exc} [{report_name}]") from None
    return value, stat, None


def _default_stat(ens: Mapping[str, Any], check: Check) -> str | None:
    """The stat label of a skipped row: what would have been read."""
    try:
        node = resolve(ens, check.metric)
    except PathError:
        return check.stat
    return None if is_number(node) else (check.stat or "mean")


def _missing_stat(ensembles: Mapping[str, Mapping[str, Any]], check: Check) -> str | None:
    """The stat label of a row whose metric this ensemble lacks, as it would read where the
    metric is present, so the row's name (JUnit test case) does not change with the data: from
    another ensemble holding the metric, else ``mean`` (gates check statistics; a plain number
    such as ``@k=10.chance`` missing from every ensemble is the one case labelled wrongly)."""
    for ens in ensembles.values():
        try:
            node = resolve(ens, check.metric)
        except PathError:
            continue
        return None if is_number(node) else (check.stat or "mean")
    return check.stat or "mean"


def run_gate(report: Mapping[str, Any], policy_path: str | Path,
             baseline: Mapping[str, Any] | None = None, *, policy: Policy | None = None,
             report_name: str = "report.json",
             baseline_name: str = "baseline report.json") -> GateResult:
    """Apply the policy at ``policy_path`` (or the already loaded ``policy``) to ``report``.

    Returns the rows in policy order, then report ensemble order. Raises :class:`FmauditError`
    (exit 2) for bad input: a malformed policy, an unknown metric (the message lists the report's
    valid names), an unknown ensemble, a stat the value lacks, a baseline bound without a
    baseline. ``report_name``/``baseline_name`` only label messages.
    """
    policy = policy if policy is not None else load_policy(policy_path)
    require_baseline(policy, baseline is not None)
    # The baseline is held to the same rules as the report: a malformed one must not turn its
    # rows into "not applicable" and let the gate pass.
    ensembles = check_report(report, report_name)["ensembles"]
    base_ensembles = (check_report(baseline, baseline_name)["ensembles"]
                      if baseline is not None else None)
    present = list(ensembles)
    if (policy.needs_baseline and base_ensembles is not None
            and not set(present) & set(base_ensembles)):
        # every baseline row would be skipped and the gate pass: surely the wrong file
        raise FmauditError(f"{baseline_name}: shares no ensemble with {report_name} (baseline: "
                           f"{', '.join(base_ensembles)}; report: {', '.join(present)}; pass "
                           "the baseline audit of the same ensembles)")
    rows: list[CheckResult] = []
    for check in policy.checks:
        where = f"{policy.path}: check {check.index}"
        for ens_name in _targets(check, present, where, report_name):
            value, stat, why = _try_value(ensembles, ens_name, check, where, report_name)
            if check.has_range:
                rows.append(_range_row(check, ens_name, value, stat, why))
            if not check.needs_baseline:
                continue
            assert base_ensembles is not None  # require_baseline above
            base, base_why = _baseline_value(check, ens_name, base_ensembles, where,
                                             baseline_name)
            rows.append(_baseline_row(check, ens_name, value, stat, why, base, base_why))
    return GateResult(policy=policy.label, checks=rows, report=report_name,
                      baseline=baseline_name if baseline is not None else None)


def _baseline_value(check: Check, ens_name: str,
                    base_ensembles: Mapping[str, Mapping[str, Any]], where: str,
                    baseline_name: str) -> tuple[float | None, str | None]:
    """The baseline's value for a row, or (None, reason) when the baseline cannot supply it.

    The baseline follows the report's rules: null is not applicable (skipped), a malformed value
    or a stat it cannot give is bad input (exit 2), and a metric it lacks follows the check's
    ``missing`` (exit 2 by default, a skipped row that says so with ``missing = "skip"``).
    An ensemble the policy names explicitly must be in the baseline (a wrong baseline file would
    otherwise pass silently); an implicitly gated one that is new since the baseline is skipped.
    """
    present = ", ".join(base_ensembles)
    explicit = [*(check.ensembles or ()), *([check.relative_to] if check.relative_to else [])]
    for name in explicit:
        if name not in base_ensembles:
            raise FmauditError(f"{where}: ensemble {name!r} is not in {baseline_name} (present: "
                               f"{present}; pass the baseline of the same ensembles)")
    if ens_name not in base_ensembles:
        return None, f"ensemble {ens_name!r} is not in the baseline"
    try:
        value, _ = _value(base_ensembles, ens_name, check)
    except _NotApplicable as exc:
        return None, str(exc)
    except _StatError as exc:
        raise FmauditError(f"{where}: {exc} [{baseline_name}]") from None
    except _Missing as exc:
        if check.missing == "skip" and not exc.present:
            return None, (f"{check.metric} is not in ensemble {exc.ensemble!r} of "
                          f"{baseline_name} (missing = \"skip\"): {exc}")
        fix = ("" if exc.present else "the baseline lacks it: pass a baseline audited with the "
               "same analyses, or set missing = \"skip\" to skip such rows; ")
        raise _unknown_metric(where, check, exc.ensemble, base_ensembles[exc.ensemble],
                              str(exc), baseline_name, fix) from None
    return value, None
