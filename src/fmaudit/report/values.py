"""Safe access to report.json values and their formatting as text.

The renderer must never crash on a null, a missing key or an unexpected type: every lookup goes
through :func:`get`, and every number through :func:`fmt_num`, which writes ``n/a`` for null.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fmaudit.report.load import is_number

NA = "n/a"

# Characters that change how the text AROUND them displays or parses, never content in a
# report: C0/C1 controls other than tab and newline (invalid in the SVGs' XML, raw in
# Markdown) and the bidirectional overrides, embeddings, isolates and marks (U+202E would show
# the rest of a line reversed).
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f"
                        "\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    r"""``text`` with every control or bidirectional-formatting character written out as
    ``\uXXXX``, so a name shows what it holds and cannot reorder or break what follows.

    >>> visible("dna\u202e=x")
    'dna\\u202e=x'
    """
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", str(text))


def get(obj: Any, *path: str | int) -> Any:
    """``obj[path[0]][path[1]]...`` or None when any step is missing, null or the wrong type."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(obj, Sequence) or isinstance(obj, str):
                return None
            if not -len(obj) <= key < len(obj):
                return None
            obj = obj[key]
        else:
            if not isinstance(obj, Mapping):
                return None
            obj = obj.get(key)
        if obj is None:
            return None
    return obj


def num(value: Any) -> float | None:
    """A finite float, or None for null, NaN/inf, booleans, huge ints and anything else."""
    return float(value) if is_number(value) else None


def spread(value: Any) -> float | None:
    """A standard deviation: a finite number >= 0, else None (a negative one is malformed)."""
    value = num(value)
    return value if value is not None and value >= 0 else None


def nums(values: Any) -> list[float | None]:
    """:func:`num` over a list (an absent list gives an empty one)."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        return []
    return [num(v) for v in values]


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def seq(value: Any) -> list[Any]:
    """``value`` as a list if it is a list/tuple, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def fmt_num(value: Any, digits: int = 4) -> str:
    """A number as short text: ``digits`` significant digits, thousands grouped, n/a for null.

    Integers print in full (``4,012,345``); floats >= 1000 without decimals; tiny floats in
    scientific notation. Non-numbers (a string where a number was expected) print as text.
    """
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return NA
        a = abs(value)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 1e-3:
            return f"{value:.{digits}g}"
        return f"{value:.{max(digits - 1, 1)}e}"
    return str(value)


def fmt_stat(stat: Any, digits: int = 4) -> str:
    """``{"mean", "std"}`` as ``mean ± std`` (``mean`` alone when std is null; n/a if no mean).

    The std keeps two significant digits and the mean is rounded to the same decimal place
    (``0.4508 ± 0.0016``, ``3,497 ± 57``), so no digit is printed that the spread makes noise.
    """
    mean = num(get(stat, "mean")) if isinstance(stat, Mapping) else num(stat)
    if mean is None:
        return NA
    std = spread(get(stat, "std"))
    if std is None:
        return fmt_num(mean, digits)
    if std > 0:
        decimals = max(0, 1 - math.floor(math.log10(std)))
        if decimals <= 6:
            return f"{mean:,.{decimals}f} ± {std:,.{decimals}f}"
    return f"{fmt_num(mean, digits)} ± {fmt_num(std, 2)}"


def fmt_seconds(value: Any) -> str:
    """Seconds as ``12.3 s`` or ``4 min 05 s``."""
    seconds = num(value)
    if seconds is None:
        return NA
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def fmt_text(value: Any) -> str:
    """Any JSON value as one line of plain text (lists joined by commas, null as n/a)."""
    if value is None:
        return NA
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # no thousands separator: it would read as a list separator here
    if isinstance(value, (bool, float)):
        return fmt_num(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_text(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt_text(v)}" for k, v in value.items())
    return " ".join(str(value).split())


def find_top_p(entries: Any, top_p: float) -> Mapping[str, Any]:
    """The ``js_distance`` entry whose ``top_p`` equals ``top_p`` (empty mapping if absent)."""
    for entry in seq(entries):
        p = num(get(entry, "top_p"))
        if p is not None and abs(p - top_p) < 1e-9:
            return mapping(entry)
    return {}


def find_k(entries: Any, k: int) -> Mapping[str, Any]:
    """The ``topk_overlap``-style entry with this ``k`` (empty mapping if absent)."""
    for entry in seq(entries):
        if num(get(entry, "k")) == k:
            return mapping(entry)
    return {}
