"""Pure parts of the Fisher-information analysis: shares per parameter group.

The gradient passes (``fmaudit.passes``) produce, per member, the summed diagonal Fisher
``F_g = sum_{theta in g} E[(d log p / d theta)^2]`` of each parameter group g (``"embeddings"``,
``"layer.<i>"``, ``"head"``, ``"other"``). Here those sums become shares and coarse splits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from fmaudit.metrics.stats import mean_std_members

__all__ = ["COARSE_GROUPS", "coarse_split", "group_shares", "shares_over_members"]

COARSE_GROUPS = ("embeddings", "body", "head")
_BODY = re.compile(r"layer\.\d+")


def group_shares(group_sums: Mapping[str, float]) -> dict[str, float]:
    """``share_g = F_g / sum_h F_h`` for every group, in the input order (sums to 1).

    Args:
        group_sums: group name -> summed Fisher (non-negative, finite).

    Raises:
        ValueError: no groups, a negative or non-finite sum, or a total of 0 (no gradient
            reached any parameter: the shares are undefined, not zero).

    Example:
        >>> group_shares({"embeddings": 3.0, "layer.0": 1.0})
        {'embeddings': 0.75, 'layer.0': 0.25}
    """
    if not group_sums:
        raise ValueError("group_shares needs at least one group")
    for name, value in group_sums.items():
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"Fisher sum of group {name!r} must be finite and >= 0, got {value}")
    total = math.fsum(float(v) for v in group_sums.values())
    if total <= 0:
        raise ValueError("the Fisher information is 0 in every group (no gradient flowed); "
                         "shares are undefined")
    return {name: float(value) / total for name, value in group_sums.items()}


def coarse_split(shares: Mapping[str, float]) -> dict[str, float]:
    """Collapse group shares into ``{"embeddings", "body", "head"}`` (+ ``"other"``).

    ``embeddings = share["embeddings"]``, ``body = sum of every "layer.<i>" share``,
    ``head = share["head"]`` (0 when a group is absent). Every remaining group (``"other"``:
    layer norms outside the layers, poolers, ...) is summed under ``"other"``, which is present
    only when that sum is non-zero: never silently dropped, never an empty key. The values
    sum to the input's total.
    """
    out = {"embeddings": 0.0, "body": 0.0, "head": 0.0}
    other = []
    for name, value in shares.items():
        if name in ("embeddings", "head"):
            out[name] += float(value)
        elif _BODY.fullmatch(name):
            out["body"] += float(value)
        else:
            other.append(float(value))
    other_total = math.fsum(other)
    if other_total != 0.0:
        out["other"] = other_total
    return out


def shares_over_members(member_shares: Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """``{group: {"mean", "std", "members"}}`` over members (std ddof=1, ``None`` with one).

    Works for fine shares and for :func:`coarse_split` outputs; a group missing from some
    members (e.g. ``"other"`` non-zero in one member only) counts as 0 there.
    """
    groups: list[str] = []
    for shares in member_shares:
        groups.extend(g for g in shares if g not in groups)
    return {
        g: mean_std_members([float(shares.get(g, 0.0)) for shares in member_shares])
        for g in groups
    }
