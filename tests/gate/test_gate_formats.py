"""Rendering: every output format, and JUnit XML that parses with the counts CI readers use."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fmaudit.gate import GateResult, OutputFormat, junit_xml, render, run_gate, write_junit
from fmaudit.gate.evaluate import CheckResult
from fmaudit.gate.formats import HEADERS, JUNIT_SUITE, junit_name
from fmaudit.report.markdown import md_escape

PolicyFile = Callable[[str], Path]

MIXED = '''
[[check]]
metric = "entropy.normalized"
max = 0.9
[[check]]
metric = "disagreement.js_distance@top_p=1.0"
max = 0.5
[[check]]
metric = "static_embeddings.topk_overlap@k=10"
min = 0.1
'''


@pytest.fixture
def mixed(two: dict[str, Any], policy_file: PolicyFile) -> GateResult:
    """Passes, failures and (text's nulled disagreement) a skip."""
    two["ensembles"]["text"]["disagreement"]["js_distance"][-1]["mean"] = None
    result = run_gate(two, policy_file(MIXED))
    assert {r.status for r in result.checks} == {"pass", "fail", "skip"}
    return result


def test_formats_are_exactly_text_md_json() -> None:
    assert [f.value for f in OutputFormat] == ["text", "md", "json"]


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_format_renders_every_row(mixed: GateResult, fmt: OutputFormat) -> None:
    out = render(mixed, fmt)
    assert render(mixed, fmt.value) == out  # the value works as well as the member
    shown = md_escape if fmt is OutputFormat.MD else str
    for row in mixed.checks:
        assert shown(row.metric) in out and shown(row.bound) in out
    if fmt is OutputFormat.JSON:
        assert json.loads(out) == mixed.to_dict()
    else:
        assert "skipped (not applicable)" in out
        assert mixed.counts_text() in out


def test_markdown_escapes_names_from_the_report_and_policy(mixed: GateResult) -> None:
    import dataclasses

    hostile = "<script>alert(1)</script>|x|[a](http://evil.com) www.evil.com\r@user"
    rows = [dataclasses.replace(r, ensemble=hostile) for r in mixed.checks]
    result = dataclasses.replace(mixed, checks=rows, policy="p`<img src=x onerror=alert(1)>.toml")
    out = render(result, OutputFormat.MD)
    for raw in ("http://", "www.evil", "|x|", "\r"):
        assert raw not in out, raw
    assert not re.search(r"(?<!\\)[<>`\[]", out)  # every HTML / code / link character escaped
    body = out.splitlines()[2:2 + len(rows)]
    assert all(line.count(" | ") == 6 for line in body)  # seven cells, none split or merged


def test_render_rejects_unknown_format(mixed: GateResult) -> None:
    with pytest.raises(ValueError):
        render(mixed, "xml")


def test_text_table_rows(mixed: GateResult) -> None:
    lines = render(mixed, OutputFormat.TEXT).splitlines()
    assert lines[0].split() == list(HEADERS)
    body = lines[2:2 + len(mixed.checks)]
    for line, row in zip(body, mixed.checks, strict=True):
        assert line.startswith(row.metric)
        assert line.rstrip().endswith({"pass": "pass", "fail": "FAIL",
                                       "skip": "skipped (not applicable)"}[row.status])
    assert mixed.summary() in lines
    assert mixed.summary().startswith("gate FAILED")
    fails = [ln for ln in lines if ln.strip().startswith("FAIL:")]
    assert len(fails) == mixed.count("fail")


def test_values_are_shown_to_four_significant_digits(mixed: GateResult) -> None:
    text, md = render(mixed, OutputFormat.TEXT), render(mixed, OutputFormat.MD)
    shown = [row for row in mixed.checks if row.value is not None]
    assert shown
    for row in shown:
        assert f"{row.value:.4g}" in text and f"{row.value:.4g}" in md


def test_markdown_table(mixed: GateResult) -> None:
    lines = render(mixed, OutputFormat.MD).splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == len(mixed.checks) + 2  # header, separator, one row per check
    ncols = len(HEADERS) + 1
    for ln in table:
        # unescaped pipes delimit ncols cells
        assert ln.replace("\\|", "").count("|") == ncols + 1
    assert lines[-1].startswith(":x: **gate failed**")
    assert sum("**FAIL**" in ln for ln in table) == mixed.count("fail")


def test_markdown_escapes_pipes() -> None:
    row = CheckResult(check=1, metric="a", ensemble="x|y", stat="mean", value=1.0,
                      bound="<= 2", status="pass", message="1 <= 2")
    out = render(GateResult(policy="p.toml", checks=[row]), OutputFormat.MD)
    assert "x\\|y" in out
    assert out.splitlines()[-1].startswith(":white_check_mark: **gate passed**")


def test_junit_counts_match(mixed: GateResult, tmp_path: Path) -> None:
    path = tmp_path / "out" / "junit.xml"
    write_junit(mixed, path)
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert root.tag == "testsuites" and len(suites) == 1
    suite = suites[0]
    assert suite.get("name") == JUNIT_SUITE
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert len(cases) == len(mixed.checks)
    assert len(failures) == mixed.count("fail") > 0
    assert len(skipped) == mixed.count("skip") > 0
    for el in (root, suite):
        assert int(el.get("tests")) == len(cases)
        assert int(el.get("failures")) == len(failures)
        assert int(el.get("skipped")) == len(skipped)
        assert int(el.get("errors")) == 0
    for case, row in zip(cases, mixed.checks, strict=True):
        assert case.get("classname") == f"fmaudit.gate.{row.ensemble}"
        assert case.get("name") == f"{row.metric} {row.stat} {row.bound}"
        fail = case.find("failure")
        assert (fail is not None) == (row.status == "fail")
        if fail is not None:
            assert fail.get("message") == row.message
    assert not list(tmp_path.joinpath("out").glob(".*.tmp"))  # atomic: no temp file left


def test_junit_escapes_and_strips_what_xml_cannot_hold() -> None:
    nasty = 'a<b>&"c\'\x01'
    row = CheckResult(check=1, metric="m", ensemble=nasty, stat=None, value=2.0,
                      bound="<= 1", status="fail", message=f"2 > max 1 {nasty}")
    root = ET.fromstring(junit_xml(GateResult(policy=nasty, checks=[row])))
    case = root.find("testsuite/testcase")
    assert case.get("classname") == "fmaudit.gate.a<b>&\"c'?"
    assert case.get("name") == "m <= 1"  # no stat for a plain number
    assert case.find("failure").get("message").endswith("a<b>&\"c'?")


def test_junit_name_is_stable_across_baselines() -> None:
    a = CheckResult(check=1, metric="m", ensemble="e", stat="mean", value=1.0,
                    bound="increase <= 0.02 vs baseline", status="pass", message="", baseline=0.5)
    b = CheckResult(check=1, metric="m", ensemble="e", stat="mean", value=3.0,
                    bound="increase <= 0.02 vs baseline", status="fail", message="", baseline=2.0)
    assert junit_name(a) == junit_name(b)


@pytest.mark.parametrize("drop_from", [("dna",), ("dna", "text")])
def test_junit_names_do_not_change_when_a_metric_goes_missing(
        two: dict[str, Any], policy_file: PolicyFile, drop_from: tuple[str, ...]) -> None:
    """A check with missing = "skip" keeps its test-case name when the metric is absent (here
    k = 10 dropped from one ensemble, or from all), so CI keeps one history per check."""
    import copy

    policy = policy_file('[[check]]\nmetric = "static_embeddings.topk_overlap@k=10"\n'
                         'min = 0.01\nmissing = "skip"\n')
    present = run_gate(two, policy)
    without = copy.deepcopy(two)
    for name in drop_from:
        overlap = without["ensembles"][name]["static_embeddings"]["topk_overlap"]
        overlap[:] = [row for row in overlap if row["k"] != 10]
    missing = run_gate(without, policy)
    assert {r.status for r in missing.checks if r.ensemble in drop_from} == {"skip"}
    assert [junit_name(r) for r in missing.checks] == [junit_name(r) for r in present.checks]
