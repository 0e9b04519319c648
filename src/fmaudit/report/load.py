"""Reading and checking report.json: the one loader and validator of the file.

``fmaudit render`` and ``fmaudit gate`` (its report and its ``--baseline``) read reports only
through :func:`load_report` / :func:`check_report`, so a file one command rejects the other rejects
too, with the same message. Every failure is an :class:`FmauditError` naming the file and, inside
it, the path of the offending value (``ensembles.dna.entropy.normalized.members[1]``).

What is checked (docs/report-schema.md):

* the envelope: a JSON object, ``schema_version`` 1, a non-empty ``ensembles`` object of objects;
* every number in the file is finite and fits a float (no NaN, Infinity, 1e400 or 10**400);
* every statistic (an object with ``mean`` and ``std``) has numeric-or-null ``mean``/``std``, a
  ``std`` >= 0, and ``members`` a list of numbers or nulls;
* the documented keys have their documented types where present (``entropy`` an object of
  statistics, ``members`` a list of objects, ``settings`` an object, ...). Null stands for "not
  applicable" anywhere inside an ensemble; absent keys are analyses that were not run. Keys the
  schema does not name are allowed (the schema may grow) and get only the number checks.

Importing this module is cheap (stdlib only): the gate uses it without the renderer.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError, bad_input
from fmaudit.io import TooLargeError, read_limited

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"
REPORT_LIMIT = 256 << 20  # bytes; real reports are tens of kB

_PASS_REPORT = "pass the report.json written by fmaudit report"
_REGENERATE = "regenerate it with fmaudit report"


def is_number(x: Any) -> bool:
    """A finite int or float that is not a bool (and, for an int, fits a float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond the float range (a JSON 10**400)
        return False


def input_path(raw: str | os.PathLike[str], what: str) -> Path:
    """``raw`` as a Path; an empty one (an unset shell variable) is refused.

    Path("") is ".", which would read ./report.json: a gate on the wrong file, or on the report
    itself given as its own baseline.
    """
    text = os.fspath(raw)
    if not text.strip():
        raise FmauditError(f"{what}: empty path (name a file)")
    return Path(text)


def report_path(path: str | os.PathLike[str]) -> Path:
    """``path``, or ``path/report.json`` when ``path`` is a folder."""
    path = Path(path)
    return path / REPORT_NAME if path.is_dir() else path


# --- messages ------------------------------------------------------------------------------------

class _Invalid(Exception):
    """A value of the report at ``path`` (inside the file) is malformed."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"  # a dotted or odd key stays unambiguous


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _brief(value: Any) -> str:
    """``value`` for a one-line message: its kind, and a short repr of a scalar."""
    kind = _kind(value)
    if isinstance(value, int) and not isinstance(value, bool) and not is_number(value):
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = repr(value)
        return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"
    return kind


# --- value checks (every number, every statistic) ------------------------------------------------

def _looks_like_stat(node: Mapping[str, Any]) -> bool:
    # rank_profile also has mean/std, but as lists (one value per rank): not a statistic.
    return ("mean" in node and "std" in node
            and not isinstance(node["mean"], (list, tuple))
            and not isinstance(node["std"], (list, tuple)))


def _check_stat_fields(node: Mapping[str, Any], path: str) -> None:
    _number(node["mean"], _join(path, "mean"))
    _spread(node["std"], _join(path, "std"))
    if "members" in node:
        _list(_number)(node["members"], _join(path, "members"))


def _check_values(report: Any) -> None:
    """Every number finite and in range, every statistic well-formed; iterative (any depth)."""
    stack: list[tuple[Any, str]] = [(report, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, bool) or node is None or isinstance(node, str):
            continue
        if isinstance(node, (int, float)):
            _number(node, path)
        elif isinstance(node, Mapping):
            if _looks_like_stat(node):
                _check_stat_fields(node, path)
            stack.extend((v, _join(path, k)) for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, _join(path, i)) for i, v in reversed(list(enumerate(node))))


# --- types of the documented keys ----------------------------------------------------------------

Spec = Callable[[Any, str], None]  # checks the value at a path; raises _Invalid


def _number(node: Any, path: str) -> None:
    if node is None or is_number(node):
        return
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        # NaN, inf (JSON 1e400) or an int beyond the float range (JSON 10**400)
        shown = repr(node) if isinstance(node, float) else _brief(node)
        raise _Invalid(path, f"{shown} is not a finite number")
    raise _Invalid(path, f"must be a number or null, found {_brief(node)}")


def _spread(node: Any, path: str) -> None:
    _number(node, path)
    if node is not None and node < 0:
        raise _Invalid(path, f"a standard deviation must be >= 0, found {node!r}")


def _count(node: Any, path: str) -> None:
    if node is not None and (not isinstance(node, int) or isinstance(node, bool) or node < 0):
        raise _Invalid(path, f"must be a whole number >= 0 or null, found {_brief(node)}")


def _text(node: Any, path: str) -> None:
    if node is not None and not isinstance(node, str):
        raise _Invalid(path, f"must be a string or null, found {_brief(node)}")


def _flag(node: Any, path: str) -> None:
    if node is not None and not isinstance(node, bool):
        raise _Invalid(path, f"must be true, false or null, found {_brief(node)}")


def _list(item: Spec) -> Spec:
    def check(node: Any, path: str) -> None:
        if node is None:
            return
        if not isinstance(node, (list, tuple)):
            raise _Invalid(path, f"must be a list or null, found {_brief(node)}")
        for i, value in enumerate(node):
            item(value, _join(path, i))
    return check


def _obj(fields: Mapping[str, Spec] | None = None, *, what: str = "an object",
         required: tuple[str, ...] = ()) -> Spec:
    """An object (or null); the named fields are checked where present, others are free."""
    def check(node: Any, path: str) -> None:
        if node is None:
            return
        if not isinstance(node, Mapping):
            raise _Invalid(path, f"must be {what} or null, found {_brief(node)}")
        for key in required:
            if key not in node:
                raise _Invalid(path, f"{what} without {key!r}")
        for key, spec in (fields or {}).items():
            if key in node:
                spec(node[key], _join(path, key))
    return check


def _map(value: Spec, what: str) -> Spec:
    """An object (or null) whose every value matches ``value`` (e.g. entropy, fisher.share)."""
    def check(node: Any, path: str) -> None:
        if node is None:
            return
        if not isinstance(node, Mapping):
            raise _Invalid(path, f"must be {what} or null, found {_brief(node)}")
        for key, v in node.items():
            value(v, _join(path, key))
    return check


def _stat(*selector: str) -> Spec:
    """A statistic {mean, std[, members]}; ``selector``: the field naming a list element."""
    fields: dict[str, Spec] = {"mean": _number, "std": _spread, "members": _list(_number),
                               "null": _number, "init": _number, "chance": _number,
                               "bandwidth": _text}
    fields.update({key: _number for key in selector})
    return _obj(fields, what="a statistic {mean, std, ...}", required=("mean", "std", *selector))


_STAT = _stat()
_STATS = _map(_STAT, "an object of statistics")

_ENSEMBLE = _obj({
    "name": _text,
    "objective": _text,
    "vocab_size": _count,
    "seq_len": _count,
    "corpus": _obj({"path": _text, "name": _text, "kind": _text, "fingerprint": _text,
                    "split": _text, "holdout": _text, "windows": _count, "window_chars": _count,
                    "positions": _count, "unk_fraction": _number, "options": _obj()}),
    "tokenizer": _obj({"class": _text, "spec": _text, "size": _count,
                       "special_tokens": _list(_text)}),
    "members": _list(_obj({"id": _text, "revision": _text, "path": _text, "source": _text,
                           "parameters": _count, "objective": _text, "architecture": _text,
                           "seed": _number, "init": _text}, what="an object (one member)")),
    "entropy": _STATS,
    "kl_uniform_bits": _STAT,
    "cross_entropy_bits": _STAT,
    "perplexity": _STAT,
    "accuracy": _STAT,
    "context_gain_bits": _STAT,
    "unigram_cross_entropy_bits": _number,
    "unigram_source": _text,
    "uniform_entropy_bits": _number,
    "rank_profile": _obj({"ranks": _list(_number), "mean": _list(_number),
                          "std": _list(_number), "members": _list(_list(_number))}),
    "disagreement": _obj({"top_p_rule": _text, "pairs": _count,
                          "js_distance": _list(_stat("top_p")), "argmax_agreement": _STAT}),
    "static_embeddings": _obj({"rows": _count, "topk_overlap": _list(_stat("k")),
                               "local_spearman": _list(_stat("k")),
                               "procrustes_disparity": _STAT, "procrustes_cosine": _STAT,
                               "linear_cka": _STAT, "rbf_cka": _STAT}),
    "contextual_embeddings": _obj({
        "windows": _count, "k": _count,
        "layers": _list(_obj({"layer": _number, "linear_cka": _STAT, "knn_overlap": _STAT},
                             what="an object (one layer)", required=("layer",))),
        "anisotropy": _STAT, "effective_rank": _STAT}),
    "fisher": _obj({"estimator": _text, "labels": _text, "tokens": _count, "windows": _count,
                    "tied": _flag, "note": _text, "groups": _list(_text), "share": _STATS,
                    "coarse": _STATS, "share_tied": _STATS, "coarse_tied": _STATS,
                    "totals": _STAT}),
}, what="an object (one ensemble)")

_TOP = _obj({
    "tool": _obj({"name": _text, "version": _text, "git": _text}),
    "created": _text,
    "command": _text,
    "settings": _obj({"top_p": _list(_number), "k": _list(_number), "analyses": _list(_text)}),
    "timing": _obj({"seconds": _number, "passes": _map(_number, "an object of seconds")}),
    "gate": _obj({"policy": _text, "passed": _flag, "report": _text, "baseline": _text,
                  "counts": _map(_count, "an object of counts"),
                  "checks": _list(_obj({"metric": _text, "ensemble": _text, "stat": _text,
                                        "value": _number, "bound": _text, "passed": _flag,
                                        "status": _text, "message": _text, "check": _count,
                                        "min": _number, "max": _number, "baseline": _number,
                                        "relative_to": _text},
                                       what="an object (one gate check)"))}),
})


# --- the report ----------------------------------------------------------------------------------

def check_report(report: Any, source: str = REPORT_NAME) -> dict[str, Any]:
    """Return ``report`` (a shallow copy) if it is a well-formed schema_version 1 report.

    Raises :class:`FmauditError` naming ``source`` and the offending path otherwise (see the
    module docstring for what is checked). Use it on a report dict that did not come from
    :func:`load_report` (``fmaudit report --gate``, tests).
    """
    if not isinstance(report, Mapping):
        raise bad_input(source, f"not a report: expected a JSON object, found {_kind(report)}",
                        _PASS_REPORT)
    if "schema_version" not in report:
        raise bad_input(source, "no schema_version", _PASS_REPORT)
    version = report["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        shown = repr(version) if isinstance(version, (str, int, float)) else _brief(version)
        raise bad_input(source, f"unknown schema_version {shown[:40]}",
                        f"this fmaudit reads schema_version {SCHEMA_VERSION}; re-run fmaudit "
                        "report, or install the fmaudit version that wrote it")
    ensembles = report.get("ensembles")
    if not isinstance(ensembles, Mapping):
        raise bad_input(source, "'ensembles' is missing or not an object", _PASS_REPORT)
    if not ensembles:  # nothing to render or gate: a gate over it would pass vacuously
        raise bad_input(source, "no ensembles", "the report is empty; rerun fmaudit report")
    try:
        _check_values(report)
        _TOP(report, "")
        for name, ens in ensembles.items():
            where = _join("ensembles", name)
            if not isinstance(ens, Mapping):  # null is no ensemble either
                raise _Invalid(where, f"must be an object (one ensemble), found {_brief(ens)}")
            _ENSEMBLE(ens, where)
    except _Invalid as exc:
        raise bad_input(source, f"{exc.path}: {exc.problem}", _REGENERATE) from None
    return dict(report)


class _Constant(Exception):
    """NaN, Infinity or -Infinity in the JSON text."""


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``path`` (a report.json, or the folder holding it).

    Every failure is an :class:`FmauditError` naming the file (and the path inside it).
    """
    given = Path(path)
    path = report_path(given)
    try:
        text = read_limited(path, REPORT_LIMIT).decode("utf-8")
    except FileNotFoundError:
        if given.is_dir():
            raise bad_input(str(given), f"is a folder without a {REPORT_NAME}",
                            _PASS_REPORT) from None
        raise bad_input(str(path), "report not found (no such file)",
                        "run fmaudit report first, or pass DIR/report.json") from None
    except IsADirectoryError:
        raise bad_input(str(path), "is a folder", "pass the report.json inside it") from None
    except UnicodeDecodeError as exc:
        raise bad_input(str(path), f"not UTF-8 text ({exc.reason})", _PASS_REPORT) from None
    except TooLargeError as exc:  # reports are tens of kB
        raise bad_input(str(path), f"is not a report: {exc}", _PASS_REPORT) from None
    except OSError as exc:
        raise bad_input(str(path), f"cannot read ({exc.strerror or exc})") from None
    try:
        report = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FmauditError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} "
                           f"({exc.msg}; {_REGENERATE})") from None
    except _Constant as exc:
        raise bad_input(str(path), f"contains {exc}",
                        f"numbers must be numbers or null; {_REGENERATE}") from None
    except ValueError as exc:  # an integer too long to convert (Python's digit limit)
        raise bad_input(str(path), f"contains a number that cannot be read ({exc})",
                        _REGENERATE) from None
    except RecursionError:
        raise bad_input(str(path), "JSON nested too deeply", _REGENERATE) from None
    return check_report(report, str(path))
