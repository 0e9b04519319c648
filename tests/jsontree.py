"""Flattening report.json trees for comparisons (shared by the tests)."""

from __future__ import annotations

from typing import Any


def numbers(tree: Any, path: str = "") -> dict[str, float]:
    """Every number (not a bool) in a JSON tree, by its path (``.key`` and ``[i]`` steps)."""
    if isinstance(tree, dict):
        children = [(f"{path}.{key}", sub) for key, sub in tree.items()]
    elif isinstance(tree, list):
        children = [(f"{path}[{i}]", sub) for i, sub in enumerate(tree)]
    else:
        number = isinstance(tree, (int, float)) and not isinstance(tree, bool)
        return {path: float(tree)} if number else {}
    return {k: v for sub_path, sub in children for k, v in numbers(sub, sub_path).items()}
