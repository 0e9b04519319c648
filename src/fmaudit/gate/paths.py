"""Metric paths into one ensemble object of report.json, and the names a report offers.

A path is dot-separated keys, with list elements picked by ``@field=value``::

    entropy.normalized                       -> {"mean", "std", "members"}   (a member statistic)
    disagreement.js_distance@top_p=1.0       -> {"top_p", "mean", "std"}     (a pair statistic)
    static_embeddings.topk_overlap@k=10.null -> a plain number
    fisher.share.layer.0                     -> keys may contain dots ("layer.0")

Keys are matched against the data (longest key first), so a key that contains a dot needs no
quoting. Selector values compare numerically with a tolerance when both sides are numbers
(``top_p=1`` matches ``1.0``), as exact strings otherwise.

The list of valid names is derived by walking the report, never written down here, so a metric
added to the report is gateable without touching this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fmaudit.report.load import is_number  # one notion of a number for every reader

# Fields of a statistic object; never used as list selectors.
STAT_FIELDS = ("mean", "std", "members")

_KEY = r"[A-Za-z0-9_\-]+"
_NUM = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_TOKEN = r"[A-Za-z0-9_\-/+]+"
_SELECTOR = rf"@[A-Za-z_]\w*=(?:{_NUM}|{_TOKEN})"
_SEGMENT = rf"{_KEY}(?:{_SELECTOR})*"
PATH_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")

_SEL_HEAD = re.compile(r"@([A-Za-z_]\w*)=")
_SEL_NUM = re.compile(rf"{_NUM}(?=$|[.@])")
_SEL_TOKEN = re.compile(r"[^.@]+")

# Selector values equal within this tolerance (JSON writes 1.0, a policy may write 1).
_REL_TOL = 1e-9
_ABS_TOL = 1e-12


class PathError(Exception):
    """A path that does not resolve; the message says where it stopped (no file name)."""


def is_stat(x: Any) -> bool:
    """A statistic object: a mapping with a numeric-or-null ``mean`` and a ``std``."""
    return (isinstance(x, Mapping) and "mean" in x and "std" in x
            and (x["mean"] is None or is_number(x["mean"])))


def valid_syntax(path: str) -> bool:
    """Whether ``path`` is keys joined by dots with optional ``@field=value`` selectors."""
    return isinstance(path, str) and PATH_RE.fullmatch(path) is not None


def _fmt_value(v: Any) -> str:
    # repr keeps JSON's spelling: 1.0 stays "1.0", 10 stays "10".
    return repr(v) if is_number(v) else str(v)


def _values_equal(element_value: Any, wanted: str) -> bool:
    if is_number(element_value):
        try:
            w = float(wanted)
        except ValueError:
            return False
        return math.isclose(float(element_value), w, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
    return isinstance(element_value, str) and element_value == wanted


def _match_key(node: Mapping[str, Any], path: str, pos: int) -> str | None:
    """The longest key of ``node`` that starts at ``path[pos]`` and ends at '.', '@' or the end."""
    best = None
    for key in node:
        if not isinstance(key, str) or not path.startswith(key, pos):
            continue
        end = pos + len(key)
        if (end == len(path) or path[end] in ".@") and (best is None or len(key) > len(best)):
            best = key
    return best


def _select(node: Any, selectors: list[tuple[str, str]], done: str) -> Any:
    """The first element of list ``node`` matching every (field, value) selector."""
    field = selectors[0][0]
    if not isinstance(node, Sequence) or isinstance(node, str):
        raise PathError(f"'{done}' is not a list, so '@{field}=' cannot select from it")
    hits = [el for el in node if isinstance(el, Mapping)]
    for field, wanted in selectors:
        present = [el[field] for el in hits if field in el]
        if not present:
            raise PathError(f"the elements of '{done}' have no field '{field}'")
        hits = [el for el in hits if field in el and _values_equal(el[field], wanted)]
        if not hits:
            have = ", ".join(_fmt_value(v) for v in present)
            raise PathError(f"'{done}' has no element with {field}={wanted} (present: {have})")
    return hits[0]


def resolve(ensemble: Mapping[str, Any], path: str) -> Any:
    """The node ``path`` points at inside ``ensemble``; raises :class:`PathError` if none.

    >>> resolve({"d": {"js": [{"top_p": 1.0, "mean": 0.3, "std": 0.1}]}}, "d.js@top_p=1")["mean"]
    0.3
    """
    node: Any = ensemble
    pos = 0
    done = ""  # the part of the path resolved so far, for messages
    while True:
        if not isinstance(node, Mapping):
            raise PathError(f"'{done}' is not a table, so it has no '{path[pos:]}'")
        key = _match_key(node, path, pos)
        if key is None:
            rest = re.split(r"[.@]", path[pos:], maxsplit=1)[0]
            where = f"under '{done}'" if done else "at the top of the ensemble"
            raise PathError(f"no key '{rest}' {where}")
        node = node[key]
        pos += len(key)
        done = path[:pos]
        # Selectors after a key filter that list together: rows@name=b@k=2 needs both.
        selectors: list[tuple[str, str]] = []
        while pos < len(path) and path[pos] == "@":
            head = _SEL_HEAD.match(path, pos)
            if head is None:
                raise PathError(f"bad selector '{path[pos:]}' (write @field=value)")
            vm = _SEL_NUM.match(path, head.end()) or _SEL_TOKEN.match(path, head.end())
            if vm is None:
                raise PathError(f"selector '@{head.group(1)}=' has no value")
            selectors.append((head.group(1), vm.group(0)))
            pos = vm.end()
        if selectors:
            node = _select(node, selectors, done)
            done = path[:pos]
        if pos == len(path):
            return node
        if path[pos] != ".":
            raise PathError(f"unexpected '{path[pos:]}' after '{done}'")
        pos += 1


@dataclass(frozen=True)
class Selector:
    """``@field=value`` in a path."""

    field: str
    value: Any


Segment = str | Selector


def format_path(segments: Sequence[Segment]) -> str:
    """Join segments: keys with '.', selectors appended as ``@field=value``."""
    out = ""
    for seg in segments:
        if isinstance(seg, Selector):
            out += f"@{seg.field}={_fmt_value(seg.value)}"
        else:
            out += ("." if out else "") + seg
    return out


def _selector_field(elements: Sequence[Any]) -> str | None:
    """The first field (in the first element's order) whose values are distinct numbers.

    Statistic fields are skipped: ``mean`` can be distinct by accident but names nothing.
    """
    if not elements or not all(isinstance(el, Mapping) for el in elements):
        return None
    for field in elements[0]:
        if field in STAT_FIELDS:
            continue
        values = [el.get(field) for el in elements]
        if all(is_number(v) for v in values) and len(set(values)) == len(values):
            return field
    return None


def _walk(node: Any, prefix: tuple[Segment, ...], out: list[tuple[Segment, ...]],
          skip: str | None = None) -> None:
    """Append to ``out`` every path under ``node``; ``skip``: a list element's selector field."""
    if is_number(node):
        out.append(prefix)
    elif is_stat(node):
        out.append(prefix)
        # Extra numeric fields of a statistic (null baselines, chance levels) are gateable too.
        for key, value in node.items():
            if key not in STAT_FIELDS and key != skip and isinstance(key, str):
                _walk(value, (*prefix, key), out)
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if key != skip and isinstance(key, str):
                _walk(value, (*prefix, key), out)
    elif isinstance(node, Sequence) and not isinstance(node, str):
        field = _selector_field(node)
        if field is None or not prefix or isinstance(prefix[-1], Selector):
            return  # elements cannot be named: not addressable by a path
        for el in node:
            _walk(el, (*prefix, Selector(field, el[field])), out, skip=field)


def metric_segments(ensemble: Mapping[str, Any]) -> list[tuple[Segment, ...]]:
    """Every path (as segments) in ``ensemble`` that ends at a number or a statistic object."""
    out: list[tuple[Segment, ...]] = []
    _walk(ensemble, (), out)
    return out


def metric_names(ensemble: Mapping[str, Any]) -> list[str]:
    """Every valid metric path of ``ensemble``, in report order, selectors fully expanded."""
    return [format_path(s) for s in metric_segments(ensemble)]


def compact_names(ensemble: Mapping[str, Any]) -> list[str]:
    """Valid names with the selector values of one list folded into ``@field={v1,v2,...}``.

    ``js_distance@top_p=0.05`` ... ``js_distance@top_p=1.0`` become one entry, so the list in an
    error message stays readable.
    """
    groups: dict[tuple[Any, ...], list[list[Any]]] = {}
    for segs in metric_segments(ensemble):
        shape = tuple(Selector(s.field, None) if isinstance(s, Selector) else s for s in segs)
        values = [s.value for s in segs if isinstance(s, Selector)]
        columns = groups.setdefault(shape, [[] for _ in values])
        for col, v in zip(columns, values, strict=True):
            if v not in col:
                col.append(v)
    names = []
    for shape, columns in groups.items():
        it = iter(columns)
        out = ""
        for seg in shape:
            if isinstance(seg, Selector):
                col = next(it)
                vals = ",".join(_fmt_value(v) for v in col)
                out += f"@{seg.field}=" + (vals if len(col) == 1 else "{" + vals + "}")
            else:
                out += ("." if out else "") + seg
        names.append(out)
    return names
