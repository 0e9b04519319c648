"""Printing command results: a table for people, JSON for machines (``--json``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import click


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None so stdout is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    click.echo(json.dumps(json_safe(obj), indent=2, allow_nan=False))


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str],
                floatfmt: str = ".4g") -> None:
    from tabulate import tabulate

    click.echo(tabulate(rows, headers=headers, floatfmt=floatfmt, tablefmt="simple"))
