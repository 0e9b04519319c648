"""``fmaudit render`` on malformed input: exactly as strict as ``fmaudit gate`` (one validator),
exit 2 with one line naming the file and the offending path; bad --out paths name the option."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from report_checks import FIXTURES

from tests.cliutil import one_error_line, run_main

Report = dict[str, Any]


def _first(r: Report) -> Report:
    return r["ensembles"]["text"]


def _set(*path: str, value: Any) -> Callable[[Report], None]:
    def mutate(r: Report) -> None:
        node: Any = r
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


# (mutation of report_three.json, raw JSON text replacing "PLACEHOLDER" or None, expected)
MALFORMED: list[tuple[Callable[[Report], None], str | None, str]] = [
    (_set("ensembles", "text", "entropy", "bits", "mean", value="PLACEHOLDER"), "NaN",
     "contains NaN"),
    (_set("ensembles", "text", "entropy", "bits", "mean", value="PLACEHOLDER"), "Infinity",
     "contains Infinity"),
    (_set("ensembles", "text", "entropy", "bits", "mean", value="PLACEHOLDER"), "1e400",
     "ensembles.text.entropy.bits.mean: inf is not a finite number"),
    (_set("ensembles", "text", "context_gain_bits", value="PLACEHOLDER"), "1" + "0" * 400,
     "ensembles.text.context_gain_bits: an integer of"),
    (_set("timing", "seconds", value="PLACEHOLDER"), "-1e999",
     "timing.seconds: -inf is not a finite number"),
    (_set("ensembles", value={}), None, "no ensembles"),
    (_set("ensembles", "text", value=None), None, "ensembles.text: must be an object"),
    (_set("ensembles", "text", "entropy", value=[1, 2]), None,
     "ensembles.text.entropy: must be an object of statistics or null, found a list"),
    (_set("ensembles", "text", "entropy", "normalized", value="high"), None,
     "ensembles.text.entropy.normalized: must be a statistic"),
    (_set("ensembles", "text", "members", value="abc"), None,
     "ensembles.text.members: must be a list or null, found a string 'abc'"),
    (_set("ensembles", "text", "members", value=["abc"]), None,
     "ensembles.text.members[0]: must be an object (one member)"),
    (_set("settings", value="abc"), None, "settings: must be an object or null, found a string"),
    (_set("gate", value="abc"), None, "gate: must be an object or null"),
    (_set("ensembles", "text", "disagreement", "js_distance", value=[{"mean": 0.1, "std": 0}]),
     None, "ensembles.text.disagreement.js_distance[0]: a statistic {mean, std, ...} without "
     "'top_p'"),
    (_set("ensembles", "text", "fisher", "share", "layer.0", "std", value=-1), None,
     'ensembles.text.fisher.share["layer.0"].std: a standard deviation must be >= 0'),
    (_set("ensembles", "text", "disagreement", "pairs", value="3"), None,
     "ensembles.text.disagreement.pairs: must be a whole number"),
    (_set("ensembles", "text", "fisher", "tied", value="yes"), None,
     "ensembles.text.fisher.tied: must be true, false or null"),
]


def _write(tmp_path: Path, report: Report, mutate: Callable[[Report], None],
           raw: str | None) -> Path:
    mutate(report)
    text = json.dumps(report)
    if raw is not None:
        text = text.replace('"PLACEHOLDER"', raw)
    path = tmp_path / "audit" / "report.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("mutate", "raw", "expected"), MALFORMED)
def test_render_rejects_what_gate_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          report_three: Report,
                                          mutate: Callable[[Report], None], raw: str | None,
                                          expected: str) -> None:
    path = _write(tmp_path, report_three, mutate, raw)
    code, out, err = run_main(["render", path], capsys)
    one_error_line(code, out, err, f"fmaudit: error: {path}: {expected}")
    assert not (path.parent / "report.html").exists()
    assert not (path.parent / "figures").exists()
    # the gate reads the file through the same validator: the same one-line message
    gate_code, gate_out, gate_err = run_main(["gate", path], capsys)
    assert (gate_code, gate_out, gate_err) == (2, "", err)


# --- output folder ------------------------------------------------------------------------------

@pytest.mark.parametrize(("out", "fragment"), [
    ("", "--out: empty path"),
    ("  ", "--out: empty path"),
    ("{tmp}/afile/sub", "--out {tmp}/afile/sub: cannot write there"),
    ("{tmp}/afile", "--out"),  # click's own check (a file given as a folder), one line too
])
def test_bad_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str,
                        fragment: str) -> None:
    (tmp_path / "afile").write_text("a file")
    code, stdout, err = run_main(["render", FIXTURES / "report_minimal.json", "--out",
                                  out.format(tmp=tmp_path)], capsys)
    one_error_line(code, stdout, err, fragment.format(tmp=tmp_path))
    assert (tmp_path / "afile").read_text() == "a file"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_out_in_proc(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["render", FIXTURES / "report_minimal.json", "--out",
                               "/proc/fmaudit-render"], capsys)
    one_error_line(code, out, err, "--out /proc/fmaudit-render: cannot write there")


def test_out_is_checked_before_the_report_is_read(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["render", tmp_path / "absent.json", "--out", ""], capsys)
    one_error_line(code, out, err, "--out: empty path")


def test_empty_report_argument_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``render ""`` must not render ./report.json (Path("") is ".")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.json").write_text((FIXTURES / "report_minimal.json").read_text())
    code, out, err = run_main(["render", ""], capsys)
    one_error_line(code, out, err, "REPORT_JSON: empty path")
    assert not (tmp_path / "report.html").exists()


def test_a_folder_renders_its_report_json(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """As for the gate, a folder means the report.json inside it; the files go beside it."""
    (tmp_path / "report.json").write_text((FIXTURES / "report_minimal.json").read_text())
    code, out, err = run_main(["render", tmp_path], capsys)
    assert code == 0, err
    assert out.split() == [str(tmp_path / "report.html"), str(tmp_path / "report.md")]


def test_huge_numbers_do_not_crash_the_value_helpers() -> None:
    from fmaudit.report.values import fmt_stat, num

    assert num(10**400) is None and num(-(10**400)) is None and num(3) == 3.0
    assert fmt_stat({"mean": 10**400, "std": 10**400}) == "n/a"


def test_bad_report_leaves_no_output_folder(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "report.json"
    bad.write_text('{"schema_version": 1, "ensembles": {}}')
    out = tmp_path / "new" / "views"
    code, o, err = run_main(["render", bad, "--out", out], capsys)
    one_error_line(code, o, err, "report.json")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("name", "make"), [("figures", "file"), ("report.html", "folder")])
def test_render_never_replaces_a_user_file_or_folder(tmp_path: Path, capsys, name, make) -> None:
    source = FIXTURES / "report_three.json"
    out = tmp_path / "out"
    out.mkdir()
    target = out / name
    if make == "file":
        target.write_text("important")
    else:
        target.mkdir()
        (target / "keep").write_text("important")
    code, o, err = run_main(["render", source, "--out", out], capsys)
    one_error_line(code, o, err, f"{name} is a {make}")
    assert [p.name for p in out.iterdir()] == [name]  # nothing else written beside it
    kept = target if make == "file" else target / "keep"
    assert kept.read_text() == "important"
