"""``fmaudit gate`` through the real entry point: exit codes 0/1/2, formats, --junit."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from fmaudit.cli.gate_cmd import gate as gate_command
from fmaudit.gate import OutputFormat
from tests.cliutil import child_env

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TWO = FIXTURES / "report-two.json"
BASE = FIXTURES / "baseline-two.json"
SINGLE = FIXTURES / "report-single.json"

Run = Callable[..., tuple[int, str, str]]
PolicyFile = Callable[[str], Path]

PASSING = '[[check]]\nmetric = "entropy.normalized"\nmax = 0.99\n'
FAILING = '[[check]]\nmetric = "entropy.normalized"\nmax = 0.9\n'


def test_exit_0_when_all_pass(run_cli: Run, policy_file: PolicyFile) -> None:
    code, out, err = run_cli("gate", TWO, "--policy", policy_file(PASSING))
    assert code == 0, err
    assert "gate PASSED" in out and err == ""


def test_exit_1_when_a_check_fails(run_cli: Run, policy_file: PolicyFile) -> None:
    code, out, _ = run_cli("gate", TWO, "--policy", policy_file(FAILING))
    assert code == 1
    assert "gate FAILED" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "{policy}", "{tmp}/absent.json"], "report not found"),
    (["--policy", "{tmp}/absent.toml", str(TWO)], "policy file not found"),
    (["--policy", "{unknown}", str(TWO)], "valid names: "),
    (["--policy", "{bad_bound}", str(TWO)], "max must be a number"),
    (["--policy", "{rna}", str(TWO)], "ensemble 'rna' is not in"),
    (["--policy", "{increase}", str(TWO)], "pass --baseline"),
])
def test_exit_2_on_bad_input(run_cli: Run, policy_file: PolicyFile, tmp_path: Path,
                             args: list[str], message: str) -> None:
    names = {
        "policy": policy_file(PASSING),
        "unknown": policy_file('[[check]]\nmetric = "entropy.normalised"\nmax = 1\n'),
        "bad_bound": policy_file('[[check]]\nmetric = "entropy.normalized"\nmax = "high"\n'),
        "rna": policy_file('[[check]]\nmetric = "entropy.normalized"\nmax = 1\nensemble = "rna"\n'),
        "increase": policy_file('[[check]]\nmetric = "entropy.normalized"\nmax_increase = 0.1\n'),
        "tmp": tmp_path,
    }
    junit = tmp_path / "junit.xml"
    code, out, err = run_cli("gate", *[a.format(**names) for a in args], "--junit", junit)
    assert code == 2
    assert out == ""
    assert err.startswith("fmaudit: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not junit.exists()  # nothing written on bad input


def test_baseline_and_junit(run_cli: Run, policy_file: PolicyFile, tmp_path: Path) -> None:
    policy = policy_file('[[check]]\nmetric = "entropy.normalized"\nmax_increase = 0.02\n')
    junit = tmp_path / "ci" / "gate.xml"
    code, out, _ = run_cli("gate", TWO, "--policy", policy, "--baseline", BASE, "--junit", junit)
    assert code == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert int(suite.get("tests")) == 2 and int(suite.get("failures")) == 1
    assert "baseline" in out


def test_json_and_md_formats(run_cli: Run, policy_file: PolicyFile) -> None:
    policy = policy_file(FAILING)
    code, out, _ = run_cli("gate", TWO, "--policy", policy, "--format", "json")
    assert code == 1
    obj = json.loads(out)
    assert obj["passed"] is False and len(obj["checks"]) == 2
    code, out, _ = run_cli("gate", TWO, "--policy", policy, "--format", "md")
    assert code == 1 and out.splitlines()[0].startswith("| metric |")


def test_format_choices_are_the_enum() -> None:
    option = next(p for p in gate_command.params if p.name == "fmt")
    assert isinstance(option.type, click.Choice)
    assert list(option.type.choices) == [f.value for f in OutputFormat]


def test_default_policy_and_report_folder(run_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "report.json").write_bytes(SINGLE.read_bytes())
    code, out, err = run_cli("gate", tmp_path)
    assert code == 0, err
    assert "skipped (not applicable)" in out
    assert "static_embeddings.topk_overlap@k=10" in out


def test_gate_is_listed_in_help(run_cli: Run) -> None:
    code, out, _ = run_cli("--help")
    assert code == 0 and "gate" in out


def test_real_process_exit_code(policy_file: PolicyFile) -> None:
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", "fmaudit", "gate", str(TWO), "--policy",
                           str(policy_file(FAILING)), "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["passed"] is False


def test_unused_baseline_is_warned_about(run_cli: Run, policy_file: PolicyFile) -> None:
    code, _, err = run_cli("gate", TWO, "--policy", policy_file(PASSING), "--baseline", BASE)
    assert code == 0
    assert err.startswith("fmaudit: warning: --baseline") and "not compared" in err
