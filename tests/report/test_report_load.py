"""Reading report.json: every bad input is an FmauditError that names the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fmaudit.errors import FmauditError
from fmaudit.report import check_report, load_report


def test_load_returns_the_report(tmp_path: Path, report_three: dict[str, Any]) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report_three))
    assert load_report(path) == report_three


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "not valid JSON at line 1"),
    ("[1, 2]", "expected a JSON object"),
    ('{"schema_version": 2, "ensembles": {}}', "unknown schema_version 2"),
    ('{"schema_version": "1", "ensembles": {}}', "unknown schema_version '1'"),
    ('{"schema_version": true, "ensembles": {}}', "unknown schema_version True"),
    ('{"ensembles": {}}', "no schema_version"),
    ('{"schema_version": 1}', "'ensembles' is missing"),
    ('{"schema_version": 1, "ensembles": {}}', "no ensembles"),
    ('{"schema_version": 1, "ensembles": {"a": 3}}', "ensembles.a: must be an object"),
])
def test_bad_reports_name_the_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "my report.json"
    path.write_text(content)
    with pytest.raises(FmauditError) as exc:
        load_report(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_folder_and_binary_files(tmp_path: Path) -> None:
    for path, expected in ((tmp_path / "nope.json", "no such file"), (tmp_path, "is a folder")):
        with pytest.raises(FmauditError, match=r"no such file|is a folder") as exc:
            load_report(path)
        assert str(path) in str(exc.value) and expected in str(exc.value)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FmauditError, match="not UTF-8"):
        load_report(binary)


def test_check_report_accepts_a_dict_and_names_the_source() -> None:
    with pytest.raises(FmauditError, match=r"^out/report\.json: unknown schema_version 7"):
        check_report({"schema_version": 7, "ensembles": {}}, "out/report.json")
    # no ensembles: nothing to render, and a gate over it would pass vacuously
    with pytest.raises(FmauditError, match=r"^report\.json: no ensembles"):
        check_report({"schema_version": 1, "ensembles": {}})
    assert check_report({"schema_version": 1, "ensembles": {"a": {}}}) == {
        "schema_version": 1, "ensembles": {"a": {}}}


def _stats(obj: Any) -> list[dict[str, Any]]:
    """Every {"mean", "std", "members"} statistic inside ``obj``."""
    if isinstance(obj, dict):
        found = [obj] if {"mean", "std", "members"} <= obj.keys() else []
        return found + [s for v in obj.values() for s in _stats(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _stats(v)]
    return []


@pytest.mark.parametrize("name", ["report_three.json", "report_minimal.json"])
def test_fixtures_follow_the_schema_notes(name: str) -> None:
    """The fixtures are honest: statistics agree with their members, one member gives nulls."""
    import numpy as np
    from report_checks import load_fixture

    report = load_fixture(name)
    check_report(report)
    for ens in report["ensembles"].values():
        n = len(ens["members"])
        stats = _stats({k: v for k, v in ens.items() if k != "rank_profile"})
        assert stats
        for stat in stats:
            members = np.asarray(stat["members"], dtype=float)
            assert len(members) == n
            assert stat["mean"] == pytest.approx(members.mean(), abs=2e-6)
            if n == 1:
                assert stat["std"] is None
            else:
                assert stat["std"] == pytest.approx(members.std(ddof=1), abs=2e-6)
        dis = ens["disagreement"]
        assert dis["pairs"] == n * (n - 1) // 2
        if n == 1:
            assert all(x["mean"] is None and x["std"] is None for x in dis["js_distance"])
            assert dis["argmax_agreement"]["mean"] is None
        if "fisher" in ens:
            for key in ("coarse", "share") + (("coarse_tied", "share_tied")
                                              if ens["fisher"]["tied"] else ()):
                total = sum(s["mean"] for s in ens["fisher"][key].values())
                assert total == pytest.approx(1.0, abs=1e-4), key
            assert ("share_tied" in ens["fisher"]) == ens["fisher"]["tied"]
