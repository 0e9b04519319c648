"""Aggregates over ensemble members and member pairs, in the shape report.json uses.

Every statistic over members is ``{"mean", "std", "members"}`` and every statistic over pairs is
``{"mean", "std"}`` (docs/report-schema.md). ``std`` is the sample standard deviation (ddof=1),
``None`` when there is a single value: one seed says nothing about the spread between seeds.

Values that are ``None`` or not finite (a metric that could not be computed) make the mean and
std ``None`` rather than silently averaging over the rest: report.json holds numbers or null,
never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

__all__ = [
    "finite_or_none",
    "mean_std",
    "mean_std_members",
    "mean_std_pairs",
    "mean_std_vectors",
    "pair_indices",
]


def finite_or_none(value: float | None) -> float | None:
    """``float(value)`` when it is a finite number, else ``None`` (NaN/inf never reach JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of ``values``.

    ``mean = sum(x) / n``; ``std = sqrt(sum((x - mean)^2) / (n - 1))``.

    Returns ``(None, None)`` for no values or when any value is ``None``/non-finite, and
    ``(mean, None)`` for a single value.
    """
    xs = [finite_or_none(v) for v in values]
    if not xs or any(x is None for x in xs):
        return None, None
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, None
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)


def mean_std_members(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "members"}`` over ensemble members (std ddof=1, ``None`` with one member).

    ``members`` keeps every member's value in order (non-finite values become ``None``).

    Example:
        >>> mean_std_members([1.0, 3.0])
        {'mean': 2.0, 'std': 1.4142135623730951, 'members': [1.0, 3.0]}
    """
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "members": [finite_or_none(v) for v in values]}


def mean_std_pairs(values: Sequence[float | None]) -> dict:
    """``{"mean", "std"}`` over member pairs (std ddof=1; both ``None`` with no pair).

    Example:
        >>> mean_std_pairs([0.5])
        {'mean': 0.5, 'std': None}
    """
    mean, std = mean_std(values)
    return {"mean": mean, "std": std}


def mean_std_vectors(vectors: Sequence[Sequence[float]]) -> dict:
    """Element-wise ``{"mean": [...], "std": [...] | None, "members": [[...], ...]}``.

    Used for per-rank curves (the rank profile). All vectors must have the same length;
    ``std`` is ``None`` (not a list) with a single member.

    Raises:
        ValueError: vectors of different lengths.
    """
    if not vectors:
        return {"mean": None, "std": None, "members": []}
    lengths = {len(v) for v in vectors}
    if len(lengths) != 1:
        raise ValueError(f"vectors have different lengths {sorted(lengths)}")
    columns = [mean_std(col) for col in zip(*vectors, strict=True)]
    means = [m for m, _ in columns]
    stds = None if len(vectors) == 1 else [s for _, s in columns]
    return {
        "mean": means,
        "std": stds,
        "members": [[finite_or_none(x) for x in v] for v in vectors],
    }


def pair_indices(n_members: int) -> list[tuple[int, int]]:
    """All member pairs ``(i, j)`` with ``i < j``, in lexicographic order (``n(n-1)/2`` pairs)."""
    if n_members < 0:
        raise ValueError(f"n_members must be >= 0, got {n_members}")
    return list(combinations(range(n_members), 2))
