"""Gate policies: plain TOML data, validated before any compute is spent.

A policy is a list of ``[[check]]`` tables::

    [[check]]
    metric = "entropy.normalized"   # path into an ensemble of report.json (see gate/paths.py)
    max = 0.9                       # and/or min (inclusive)
    ensemble = "dna"                # or ["dna", "rna"]; default: every ensemble of the report
    stat = "mean"                   # mean (default) | max | min | std
    max_increase = 0.02             # value - baseline <= 0.02 (needs --baseline)
    max_decrease = 0.02             # baseline - value <= 0.02 (needs --baseline)
    relative_to = "text"            # bounds apply to value / (same metric, same stat, of "text")
    missing = "error"               # (default) exit 2 if the report lacks the metric; or "skip"

Unknown keys are rejected by name at every level; bounds must be finite numbers; ``min <= max``.
Whether a metric exists is checked against the report, in :func:`fmaudit.gate.run_gate`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError
from fmaudit.gate.paths import valid_syntax
from fmaudit.io import TooLargeError, read_limited

STATS = ("mean", "max", "min", "std")
TOP_KEYS = ("check",)
CHECK_KEYS = ("metric", "min", "max", "ensemble", "stat", "max_increase", "max_decrease",
              "relative_to", "missing")
MISSING = ("error", "skip")
_BOUND_KEYS = ("min", "max", "max_increase", "max_decrease")


@dataclass(frozen=True)
class Check:
    """One ``[[check]]`` of a policy. ``index`` is 1-based, for messages."""

    index: int
    metric: str
    min: float | None = None
    max: float | None = None
    ensembles: tuple[str, ...] | None = None  # None: every ensemble of the report
    stat: str | None = None  # None: mean for statistics, the number itself for plain numbers
    max_increase: float | None = None
    max_decrease: float | None = None
    relative_to: str | None = None
    # "skip": a report without this metric (an analysis not run, a k at or above the number of
    # rows) gives a not-applicable row instead of exit 2. Typos then go unnoticed: opt in per check.
    missing: str = "error"

    @property
    def has_range(self) -> bool:
        return self.min is not None or self.max is not None

    @property
    def needs_baseline(self) -> bool:
        return self.max_increase is not None or self.max_decrease is not None


@dataclass(frozen=True)
class Policy:
    """A parsed policy file."""

    path: Path
    checks: tuple[Check, ...]

    @property
    def needs_baseline(self) -> bool:
        """Whether any check compares against ``--baseline``."""
        return any(c.needs_baseline for c in self.checks)

    @property
    def label(self) -> str:
        """How results name the policy: the path as given, or ``fmaudit:gate-default.toml``
        for the shipped one (its install path says nothing about the policy)."""
        if self.path.resolve() == default_policy_path().resolve():
            return f"fmaudit:{self.path.name}"
        return str(self.path)


def default_policy_path() -> Path:
    """The shipped default policy (``fmaudit/recipes/gate-default.toml``)."""
    from importlib.resources import files

    return Path(str(files("fmaudit").joinpath("recipes", "gate-default.toml")))


def _reject_unknown(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise FmauditError(f"{where}: unknown key {', '.join(repr(k) for k in unknown)} "
                           f"(allowed: {', '.join(allowed)})")


def _number(where: str, key: str, value: Any) -> float:
    # bool is an int in Python; "max = true" is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FmauditError(f"{where}: {key} must be a number, got {type(value).__name__} "
                           f"{value!r} (write e.g. {key} = 0.9, without quotes)")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond the float range (TOML ints are unbounded)
        raise FmauditError(f"{where}: {key} is too large (an integer beyond the range of a "
                           "number; write a finite bound, or drop it)") from None
    if not finite:
        raise FmauditError(f"{where}: {key} must be a finite number, got {value!r} "
                           "(drop the bound instead)")
    return float(value)


def _name(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FmauditError(f"{where}: {key} must be an ensemble name (a non-empty string), "
                           f"got {value!r}")
    return value


def _parse_check(where: str, index: int, raw: Any) -> Check:
    if not isinstance(raw, dict):
        raise FmauditError(f"{where}: must be a table (write [[check]] followed by key = value "
                           "lines)")
    _reject_unknown(where, raw, CHECK_KEYS)
    metric = raw.get("metric")
    if metric is None:
        raise FmauditError(f"{where}: missing 'metric' (e.g. metric = \"entropy.normalized\")")
    if not isinstance(metric, str) or not valid_syntax(metric):
        raise FmauditError(f"{where}: metric {metric!r} is not a path (write dot-separated keys, "
                           "a list element as @field=value, e.g. "
                           "\"disagreement.js_distance@top_p=1.0\")")
    bounds = {k: _number(where, k, raw[k]) for k in _BOUND_KEYS if k in raw}
    if not bounds:
        raise FmauditError(f"{where}: no bound (give at least one of {', '.join(_BOUND_KEYS)})")
    lo, hi = bounds.get("min"), bounds.get("max")
    if lo is not None and hi is not None and lo > hi:
        raise FmauditError(f"{where}: min {lo:g} is greater than max {hi:g} (swap them)")
    for key in ("max_increase", "max_decrease"):
        if key in bounds and bounds[key] < 0:
            raise FmauditError(f"{where}: {key} must be >= 0, got {bounds[key]:g} "
                               "(it is an allowed change in the metric's units)")
    ensembles = None
    if "ensemble" in raw:
        ens = raw["ensemble"]
        names = ens if isinstance(ens, list) else [ens]
        if not names:
            raise FmauditError(f"{where}: ensemble is an empty list (omit it to mean every "
                               "ensemble)")
        ensembles = tuple(_name(where, "ensemble", n) for n in names)
    stat = raw.get("stat")
    if stat is not None and stat not in STATS:
        raise FmauditError(f"{where}: stat {stat!r} is not one of {', '.join(STATS)}")
    relative_to = _name(where, "relative_to", raw["relative_to"]) if "relative_to" in raw else None
    if relative_to is not None and ensembles is not None and relative_to in ensembles:
        raise FmauditError(f"{where}: relative_to {relative_to!r} is also a gated ensemble; its "
                           "ratio to itself is always 1 (remove it from ensemble)")
    missing = raw.get("missing", "error")
    if missing not in MISSING:
        raise FmauditError(f"{where}: missing {missing!r} is not one of {', '.join(MISSING)}")
    return Check(index=index, metric=metric, min=lo, max=hi, ensembles=ensembles, stat=stat,
                 max_increase=bounds.get("max_increase"),
                 max_decrease=bounds.get("max_decrease"), relative_to=relative_to,
                 missing=missing)


def parse_policy(data: dict[str, Any], path: Path) -> Policy:
    """Validate parsed TOML ``data`` (from ``path``, used in messages) into a :class:`Policy`."""
    _reject_unknown(str(path), data, TOP_KEYS)
    raw_checks = data.get("check")
    if raw_checks is None:
        raise FmauditError(f"{path}: no [[check]] tables (add at least one; see "
                           "recipes/gate-default.toml)")
    if not isinstance(raw_checks, list):
        raise FmauditError(f"{path}: 'check' must be an array of tables (write [[check]], with "
                           "double brackets)")
    if not raw_checks:
        raise FmauditError(f"{path}: 'check' is empty (add at least one [[check]])")
    checks = tuple(_parse_check(f"{path}: check {i}", i, raw)
                   for i, raw in enumerate(raw_checks, start=1))
    return Policy(path=path, checks=checks)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises :class:`FmauditError` (exit 2) if malformed."""
    path = Path(path)
    try:
        text = read_limited(path, 1 << 20)  # policies are a few kB
    except FileNotFoundError:
        raise FmauditError(f"{path}: policy file not found (pass --policy with an existing TOML "
                           "file, e.g. recipes/gate-default.toml)") from None
    except TooLargeError as exc:
        raise FmauditError(f"{path}: not a policy ({exc}; pass the TOML policy file)") from None
    except OSError as exc:
        raise FmauditError(f"{path}: cannot read the policy ({exc.strerror})") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise FmauditError(f"{path}: policy is not UTF-8 text (save it as UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise FmauditError(f"{path}: not valid TOML: {exc} (fix the syntax)") from None
    except ValueError as exc:  # an integer too long for Python to convert (its digit limit)
        raise FmauditError(f"{path}: a number in the policy cannot be read ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays recursively
        raise FmauditError(f"{path}: not valid TOML: nested too deeply (fix the syntax)") from None
    return parse_policy(data, path)
