"""The report.json fixtures: reproducible from their script and consistent with the schema."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmaudit.gate import check_report

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ["report-two.json", "baseline-two.json", "report-single.json"]


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("make_gate_fixtures",
                                                  FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stored_fixtures_match_their_script() -> None:
    script = _script()
    built = script.fixtures()
    assert sorted(built) == sorted(NAMES)
    for name, obj in built.items():
        assert (FIXTURES / name).read_text(encoding="utf-8") == script.dump(obj), (
            f"{name} is stale: run python tests/gate/fixtures/make_fixtures.py")


def _member_stats(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if isinstance(node.get("members"), list) and "mean" in node and \
            all(isinstance(m, (int, float)) for m in node["members"]) else []
        return own + [s for v in node.values() for s in _member_stats(v)]
    if isinstance(node, list):
        return [s for v in node for s in _member_stats(v)]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_fixture_aggregates_are_consistent(name: str) -> None:
    report = json.loads((FIXTURES / name).read_text(encoding="utf-8"),
                        parse_constant=lambda c: pytest.fail(f"{name} contains {c}"))
    check_report(report, name)
    for ens in report["ensembles"].values():
        n = len(ens["members"])
        stats = _member_stats(ens)
        assert len(stats) > 10
        for stat in stats:
            values = np.asarray(stat["members"], dtype=float)
            assert len(values) == n
            assert stat["mean"] == pytest.approx(values.mean(), rel=1e-12)
            if n == 1:
                assert stat["std"] is None
            else:
                assert stat["std"] == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-15)
        assert ens["disagreement"]["pairs"] == n * (n - 1) // 2
        for el in ens["disagreement"]["js_distance"]:
            assert (el["mean"] is None) == (n == 1)
        for share in ("coarse", "share"):
            total = sum(s["mean"] for s in ens["fisher"][share].values())
            assert math.isclose(total, 1.0, rel_tol=1e-12)
        log_v = math.log2(ens["vocab_size"])
        assert ens["entropy"]["bits"]["mean"] == pytest.approx(
            ens["entropy"]["normalized"]["mean"] * log_v)
        assert ens["context_gain_bits"]["mean"] == pytest.approx(
            ens["unigram_cross_entropy_bits"] - ens["cross_entropy_bits"]["mean"])
