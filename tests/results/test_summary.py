"""The summary table printed after an audit: every cell read from the report it summarises."""

from __future__ import annotations

import json
from pathlib import Path

from fmaudit.results.summary import summary_rows

DEMO = Path(__file__).resolve().parents[2] / "reports" / "demo" / "report.json"


def test_every_cell_is_the_reports_value():
    report = json.loads(DEMO.read_text())
    headers, rows = summary_rows(report)
    assert [r[0] for r in rows] == list(report["ensembles"])
    for row in rows:
        e = report["ensembles"][row[0]]
        cells = dict(zip(headers, row, strict=True))
        js = {r["top_p"]: r["mean"] for r in e["disagreement"]["js_distance"]}
        overlap = {r["k"]: r["mean"] for r in e["static_embeddings"]["topk_overlap"]}
        coarse = e["fisher"]["coarse"]
        assert cells["members"] == len(e["members"])
        assert cells["entropy (norm.)"] == e["entropy"]["normalized"]["mean"]
        assert cells["context gain (bits)"] == e["context_gain_bits"]["mean"]
        assert cells["JS p=1.0"] == js[1.0] and cells["JS p=0.5"] == js[0.5]
        assert js[1.0] != js[0.5]
        assert cells["top-10 overlap"] == overlap[10] and overlap[10] != overlap[1]
        assert cells["Fisher emb/body/head"] == "/".join(
            f"{coarse[g]['mean']:.2f}" for g in ("embeddings", "body", "head"))


def test_sections_an_audit_left_out_are_blank():
    report = json.loads(DEMO.read_text())
    for e in report["ensembles"].values():
        for key in ("disagreement", "static_embeddings", "fisher"):
            e.pop(key)
    _, rows = summary_rows(report)
    for row in rows:
        assert row[4:] == [None, None, None, None]
