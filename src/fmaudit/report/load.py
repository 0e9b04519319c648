"""Reading and checking report.json before anything is rendered."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError, bad_input

SCHEMA_VERSION = 1


def check_report(report: Any, source: str = "report.json") -> dict[str, Any]:
    """Return ``report`` if it is a schema_version 1 report object; else raise FmauditError.

    Only the envelope is checked (an object, a known schema_version, an ``ensembles`` object):
    everything inside may be null or absent and renders as n/a or an omitted section.
    """
    if not isinstance(report, Mapping):
        raise bad_input(source, f"expected a JSON object, found {type(report).__name__}",
                        "pass the report.json written by fmaudit report")
    version = report.get("schema_version")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise bad_input(source, f"unknown schema_version {version!r}",
                        f"this fmaudit renders schema_version {SCHEMA_VERSION}; re-run "
                        "fmaudit report, or install the fmaudit version that wrote it")
    ensembles = report.get("ensembles")
    if not isinstance(ensembles, Mapping):
        raise bad_input(source, "'ensembles' is missing or not an object",
                        "pass the report.json written by fmaudit report")
    if any(not isinstance(e, Mapping) for e in ensembles.values()):
        raise bad_input(source, "every value of 'ensembles' must be an object",
                        "pass the report.json written by fmaudit report")
    return dict(report)


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``path``; every failure is an FmauditError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad_input(str(path), "no such file",
                        "pass the report.json written by fmaudit report") from None
    except IsADirectoryError:
        raise bad_input(str(path), "is a folder",
                        "pass the report.json inside it") from None
    except UnicodeDecodeError as exc:
        raise bad_input(str(path), f"not UTF-8 text ({exc.reason})",
                        "pass the report.json written by fmaudit report") from None
    except OSError as exc:
        raise bad_input(str(path), f"cannot read ({exc.strerror or exc})") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FmauditError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} "
                           f"({exc.msg})") from None
    except RecursionError:
        raise bad_input(str(path), "JSON nested too deeply") from None
    return check_report(report, str(path))
