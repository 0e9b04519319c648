"""The summary table printed after an audit (one row per ensemble)."""

from __future__ import annotations

from typing import Any


def _mean(obj: Any) -> float | None:
    if isinstance(obj, dict):
        return obj.get("mean")
    return obj


def _js_at(entry: dict, p: float) -> float | None:
    for row in (entry.get("disagreement") or {}).get("js_distance") or []:
        if abs(row["top_p"] - p) < 1e-9:
            return row["mean"]
    return None


def _overlap_at(entry: dict, k: int) -> float | None:
    for row in (entry.get("static_embeddings") or {}).get("topk_overlap") or []:
        if row["k"] == k:
            return row["mean"]
    return None


def summary_rows(report: dict) -> tuple[list[str], list[list[Any]]]:
    headers = ["ensemble", "members", "entropy (norm.)", "context gain (bits)", "JS p=1.0",
               "JS p=0.5", "top-10 overlap", "Fisher emb/body/head"]
    rows = []
    for name, e in report["ensembles"].items():
        coarse = (e.get("fisher") or {}).get("coarse") or {}
        fisher = "/".join(f"{_mean(coarse[g]):.2f}" if _mean(coarse.get(g)) is not None else "n/a"
                          for g in ("embeddings", "body", "head")) if coarse else None
        rows.append([
            name, len(e.get("members", [])),
            _mean((e.get("entropy") or {}).get("normalized")),
            _mean(e.get("context_gain_bits")),
            _js_at(e, 1.0), _js_at(e, 0.5), _overlap_at(e, 10), fisher,
        ])
    return headers, rows
