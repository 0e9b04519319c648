"""``fmaudit render REPORT_JSON [--out DIR]``: round trip, default folder, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_checks import FIXTURES

from fmaudit.cli import main
from tests.cliutil import child_env

SRC = Path(__file__).resolve().parents[2] / "src"


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_round_trip_in_a_subprocess(tmp_path: Path) -> None:
    """The real command line: exit 0, files beside the JSON, their paths on stdout."""
    report = tmp_path / "audit" / "report.json"
    report.parent.mkdir()
    shutil.copy(FIXTURES / "report_three.json", report)
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", "fmaudit", "render", str(report)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(report.parent / "report.html"),
                                   str(report.parent / "report.md")]
    assert (report.parent / "figures" / "disagreement.svg").is_file()
    assert report.read_bytes() == (FIXTURES / "report_three.json").read_bytes()  # untouched


def test_out_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["render", str(FIXTURES / "report_minimal.json"), "--out",
                             str(tmp_path / "elsewhere")], capsys)
    assert code == 0
    assert out.split()[0] == str(tmp_path / "elsewhere" / "report.html")
    assert (tmp_path / "elsewhere" / "report.html").is_file()
    assert (tmp_path / "elsewhere" / "report.md").is_file()
    assert not (FIXTURES / "report.html").exists()


@pytest.mark.parametrize(("content", "expected"), [
    ("{broken", "not valid JSON"),
    ('{"schema_version": 99, "ensembles": {}}', "unknown schema_version 99"),
    ("", "not valid JSON"),
])
def test_bad_json_is_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     content: str, expected: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    code, out, err = run_main(["render", str(path)], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"fmaudit: error: {path}: ")
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["render", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and "no such file" in err and err.count("\n") == 1


def test_help_lists_render(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "render" in out
    code, out, _ = run_main(["render", "--help"], capsys)
    assert code == 0 and "--out" in out and "REPORT_JSON" in out


def test_render_reads_only_the_json(tmp_path: Path) -> None:
    """Member paths in the JSON point nowhere: rendering must not need them."""
    report = json.loads((FIXTURES / "report_three.json").read_text())
    for ens in report["ensembles"].values():
        for m in ens["members"]:
            m["path"] = str(tmp_path / "missing-model")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    # In a fresh interpreter, so other tests' imports do not count: no torch/transformers.
    # (importlib.util: fmaudit.cli uses it without importing it; `python -m` imports it anyway.)
    probe = ("import importlib.util, sys\nfrom fmaudit.cli import main\ntry:\n"
             "    main(['render', sys.argv[1]])\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    env = child_env()
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "report.html").is_file()
