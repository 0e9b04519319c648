"""``fmaudit gate`` on malformed input: exit 2 with one line naming the file or option, never a
traceback (exit 3) and never a pass. Every bad input is built here, in tmp_path."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fmaudit.errors import FmauditError
from fmaudit.gate import run_gate
from tests.cliutil import child_env, one_error_line

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TWO = FIXTURES / "report-two.json"
BASE = FIXTURES / "baseline-two.json"

Run = Callable[..., tuple[int, str, str]]
PolicyFile = Callable[[str], Path]
Report = dict[str, Any]

PASSING = '[[check]]\nmetric = "entropy.normalized"\nmax = 0.99\n'
INCREASE = '[[check]]\nmetric = "entropy.normalized"\nmax_increase = 0.5\n'




def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --- output paths (--junit) ---------------------------------------------------------------------

@pytest.mark.parametrize(("junit", "fragments"), [
    ("{tmp}/afile/x.xml", ["--junit {tmp}/afile/x.xml: {tmp}/afile is not a folder"]),
    ("{tmp}/afile/deeper/x.xml", ["{tmp}/afile is not a folder"]),
    ("", ["--junit: empty path"]),
    ("   ", ["--junit: empty path"]),
    ("{tmp}", ["--junit", "is a directory"]),  # click's own check, also one line
])
def test_bad_junit_path(run_cli: Run, policy_file: PolicyFile, tmp_path: Path, junit: str,
                        fragments: list[str]) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    code, out, err = run_cli("gate", TWO, "--policy", policy_file(PASSING), "--junit",
                             junit.format(tmp=tmp_path))
    one_error_line(code, out, err, *(f.format(tmp=tmp_path) for f in fragments))
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_junit_in_proc_is_bad_input(run_cli: Run, policy_file: PolicyFile) -> None:
    code, out, err = run_cli("gate", TWO, "--policy", policy_file(PASSING), "--junit",
                             "/proc/fmaudit-gate.xml")
    one_error_line(code, out, err, "--junit /proc/fmaudit-gate.xml: cannot write in /proc")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_junit_in_a_read_only_folder(run_cli: Run, policy_file: PolicyFile,
                                     tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = run_cli("gate", TWO, "--policy", policy_file(PASSING), "--junit",
                                 ro / "x.xml")
    finally:
        ro.chmod(0o700)
    one_error_line(code, out, err, f"--junit {ro / 'x.xml'}: cannot write in {ro}")


def test_junit_is_checked_before_the_reports(run_cli: Run, policy_file: PolicyFile,
                                             tmp_path: Path) -> None:
    """The output path is refused up front, not after reading (or gating) the reports."""
    code, out, err = run_cli("gate", tmp_path / "absent.json", "--policy", policy_file(PASSING),
                             "--junit", "")
    one_error_line(code, out, err, "--junit: empty path")


def test_junit_write_failure_is_bad_input(run_cli: Run, policy_file: PolicyFile, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error at write time (disk full, a race) names the option and the path."""
    import fmaudit.report.outputs as outputs

    def full(path: Any, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "atomic_write_bytes", full)
    junit = tmp_path / "gate.xml"
    code, _, err = run_cli("gate", TWO, "--policy", policy_file(PASSING), "--junit", junit)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--junit {junit}: cannot write (No space left on device" in err
    assert not junit.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_junit_to_a_pipe_is_written_through(run_cli: Run, policy_file: PolicyFile,
                                            tmp_path: Path) -> None:
    """A device or pipe (/dev/stdout, /dev/null) is written through, never replaced by a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = run_cli("gate", TWO, "--policy", policy_file(PASSING), "--junit", fifo)
    reader.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the pipe
    assert received and received[0].startswith(b"<?xml")


@pytest.mark.parametrize("target", ["report", "baseline", "policy"])
@pytest.mark.parametrize("via_link", [False, True])
def test_junit_onto_an_input_is_refused(run_cli: Run, policy_file: PolicyFile, tmp_path: Path,
                                        target: str, via_link: bool) -> None:
    """--junit naming the report, the baseline or the policy (or a link to it) would replace
    that input with XML: refused before anything is written."""
    inputs = {"report": tmp_path / "report.json", "baseline": tmp_path / "baseline.json",
              "policy": policy_file(INCREASE)}
    inputs["report"].write_bytes(TWO.read_bytes())
    inputs["baseline"].write_bytes(BASE.read_bytes())
    junit = inputs[target]
    if via_link:
        junit = tmp_path / "link.xml"
        junit.symlink_to(inputs[target])
    before = {k: p.read_bytes() for k, p in inputs.items()}
    code, out, err = run_cli("gate", inputs["report"], "--baseline", inputs["baseline"],
                             "--policy", inputs["policy"], "--junit", junit)
    one_error_line(code, out, err, f"--junit {junit}: is the {target} this command reads")
    assert {k: p.read_bytes() for k, p in inputs.items()} == before


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_input_files_are_refused_after_a_bounded_read(run_cli: Run, monkeypatch,
                                                            tmp_path: Path) -> None:
    """/dev/zero (or a huge file named by mistake) as the report or the policy: exit 2 after
    reading at most the limit, not a hang or an out-of-memory kill."""
    import fmaudit.report.load

    monkeypatch.setattr(fmaudit.report.load, "REPORT_LIMIT", 1 << 16)
    code, out, err = run_cli("gate", "/dev/zero")
    one_error_line(code, out, err, "/dev/zero: is not a report: larger than")
    code, out, err = run_cli("gate", TWO, "--policy", "/dev/zero")
    one_error_line(code, out, err, "/dev/zero: not a policy (larger than 1 MiB")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((1 << 16) + 1))
    code, out, err = run_cli("gate", big)
    one_error_line(code, out, err, f"{big}: is not a report: larger than")


@pytest.mark.parametrize("option", ["REPORT", "--baseline", "--policy"])
def test_empty_input_paths_are_refused(run_cli: Run, policy_file: PolicyFile, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, option: str) -> None:
    """An unset variable (``gate "$REPORT"``) must not read ./report.json instead."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.json").write_text(TWO.read_text())  # what "" would silently pick up
    args = {"REPORT": ["", "--policy", policy_file(INCREASE), "--baseline", BASE],
            "--baseline": [TWO, "--policy", policy_file(INCREASE), "--baseline", ""],
            "--policy": [TWO, "--policy", ""]}[option]
    code, out, err = run_cli("gate", *args)
    one_error_line(code, out, err, f"{option}: empty path")


# --- policy numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize(("bound", "fragment"), [
    ("9" * 310, "check 1: max is too large"),          # beyond the float range
    ("-" + "9" * 310, "check 1: max is too large"),
    ("9" * 5000, "a number in the policy cannot be read"),  # beyond Python's digit limit
])
def test_huge_policy_bound(run_cli: Run, policy_file: PolicyFile, bound: str,
                           fragment: str) -> None:
    path = policy_file(f'[[check]]\nmetric = "entropy.normalized"\nmax = {bound}\n')
    code, out, err = run_cli("gate", TWO, "--policy", path)
    one_error_line(code, out, err, f"{path}: ", fragment)


def test_deeply_nested_policy(run_cli: Run, policy_file: PolicyFile) -> None:
    path = policy_file("a = " + "[" * 5000 + "]" * 5000 + "\n")
    code, out, err = run_cli("gate", TWO, "--policy", path)
    one_error_line(code, out, err, f"{path}: not valid TOML")


# --- numbers in the report and the baseline -----------------------------------------------------

@pytest.mark.parametrize("which", ["report", "baseline"])
@pytest.mark.parametrize(("text", "fragment"), [
    ("1" + "0" * 400, "ensembles.dna.context_gain_bits: an integer of"),
    ("1e400", "ensembles.dna.context_gain_bits: inf is not a finite number"),
    ("-1e400", "ensembles.dna.context_gain_bits: -inf is not a finite number"),
    ("NaN", "contains NaN"),
])
def test_out_of_range_numbers(run_cli: Run, policy_file: PolicyFile, tmp_path: Path,
                              two: Report, baseline_two: Report, which: str, text: str,
                              fragment: str) -> None:
    obj = two if which == "report" else baseline_two
    obj["ensembles"]["dna"]["context_gain_bits"] = "PLACEHOLDER"
    path = tmp_path / f"{which}.json"
    path.write_text(json.dumps(obj).replace('"PLACEHOLDER"', text), encoding="utf-8")
    report = path if which == "report" else TWO
    baseline = path if which == "baseline" else BASE
    code, out, err = run_cli("gate", report, "--policy", policy_file(INCREASE), "--baseline",
                             baseline)
    one_error_line(code, out, err, f"{path}: ", fragment)


# --- a malformed baseline never passes ----------------------------------------------------------

def _normalized(value: Any) -> Callable[[Report], None]:
    def mutate(r: Report) -> None:
        r["ensembles"]["dna"]["entropy"]["normalized"] = value
    return mutate


def _del_normalized(r: Report) -> None:
    del r["ensembles"]["dna"]["entropy"]["normalized"]


def _field(key: str, value: Any) -> Callable[[Report], None]:
    def mutate(r: Report) -> None:
        r["ensembles"]["dna"]["entropy"]["normalized"][key] = value
    return mutate


MALFORMED = [
    (_normalized("high"), "ensembles.dna.entropy.normalized: must be a statistic",
     "found a string 'high'"),
    (_normalized([0.9, 0.95]), "ensembles.dna.entropy.normalized: must be a statistic",
     "found a list"),
    (_normalized(0.9), "ensembles.dna.entropy.normalized: must be a statistic",
     "found a number 0.9"),
    (_field("mean", "0.9"), "ensembles.dna.entropy.normalized.mean: must be a number", ""),
    (_field("mean", True), "ensembles.dna.entropy.normalized.mean: must be a number", ""),
    (_field("members", "abc"), "ensembles.dna.entropy.normalized.members: must be a list", ""),
    (_field("std", -0.5), "ensembles.dna.entropy.normalized.std: a standard deviation", ""),
    (lambda r: r["ensembles"]["dna"].update(entropy=[1, 2]),
     "ensembles.dna.entropy: must be an object of statistics", ""),
]


@pytest.mark.parametrize("which", ["report", "baseline"])
@pytest.mark.parametrize(("mutate", "fragment", "detail"), MALFORMED)
def test_malformed_metric_exits_2_in_report_and_baseline_alike(
        run_cli: Run, policy_file: PolicyFile, tmp_path: Path, two: Report,
        baseline_two: Report, which: str, mutate: Callable[[Report], None], fragment: str,
        detail: str) -> None:
    obj = two if which == "report" else baseline_two
    mutate(obj)
    path = write_json(tmp_path / f"{which}.json", obj)
    report = path if which == "report" else TWO
    baseline = path if which == "baseline" else BASE
    junit = tmp_path / "junit.xml"
    code, out, err = run_cli("gate", report, "--policy", policy_file(INCREASE), "--baseline",
                             baseline, "--junit", junit)
    one_error_line(code, out, err, f"fmaudit: error: {path}: {fragment}", detail)
    assert not junit.exists()


def test_metric_missing_from_baseline_follows_missing(run_cli: Run, policy_file: PolicyFile,
                                                      tmp_path: Path,
                                                      baseline_two: Report) -> None:
    _del_normalized(baseline_two)
    base = write_json(tmp_path / "base.json", baseline_two)
    # default missing = "error": exit 2 naming the baseline, as for the report
    code, out, err = run_cli("gate", TWO, "--policy", policy_file(INCREASE), "--baseline", base)
    one_error_line(code, out, err, "metric 'entropy.normalized' not found in ensemble 'dna' of "
                   f"{base}", "the baseline lacks it", 'missing = "skip"')
    # missing = "skip": a skipped row whose message says the baseline lacks the metric
    policy = policy_file(INCREASE + 'missing = "skip"\n')
    code, out, err = run_cli("gate", TWO, "--policy", policy, "--baseline", base, "--format",
                             "json")
    assert code == 0, err
    rows = {r["ensemble"]: r for r in json.loads(out)["checks"]}
    assert rows["dna"]["status"] == "skip"
    assert rows["dna"]["message"].startswith("not applicable: baseline: ")
    assert f"not in ensemble 'dna' of {base} (missing = \"skip\")" in rows["dna"]["message"]
    assert rows["text"]["status"] == "pass"


def test_metric_missing_from_report_and_baseline_alike(run_cli: Run, policy_file: PolicyFile,
                                                       tmp_path: Path, two: Report) -> None:
    """The same missing metric gives the same exit code whichever file lacks it."""
    _del_normalized(two)
    report = write_json(tmp_path / "report.json", two)
    code, out, err = run_cli("gate", report, "--policy", policy_file(INCREASE), "--baseline",
                             BASE)
    one_error_line(code, out, err, f"not found in ensemble 'dna' of {report}")


def test_baseline_stat_it_cannot_give_is_bad_input(policy_file: PolicyFile, two: Report,
                                                   baseline_two: Report) -> None:
    """stat = "max" needs members; a baseline without them is malformed, not 'not applicable'."""
    del baseline_two["ensembles"]["dna"]["entropy"]["normalized"]["members"]
    with pytest.raises(FmauditError, match=r"check 1: .*no per-member values.*\[old\.json\]"):
        run_gate(two, policy_file(INCREASE + 'stat = "max"\n'), baseline_two,
                 baseline_name="old.json")


def test_run_gate_validates_a_baseline_dict(policy_file: PolicyFile, two: Report,
                                            baseline_two: Report) -> None:
    """``fmaudit report --gate --baseline`` passes dicts: the same validator applies."""
    baseline_two["ensembles"]["dna"]["entropy"]["normalized"] = "high"
    with pytest.raises(FmauditError, match=r"^old\.json: ensembles\.dna\.entropy\.normalized: "):
        run_gate(two, policy_file(INCREASE), baseline_two, baseline_name="old.json")
    two["ensembles"]["dna"]["context_gain_bits"] = float("nan")
    with pytest.raises(FmauditError, match=r"^new\.json: ensembles\.dna\.context_gain_bits: nan "):
        run_gate(two, policy_file(PASSING), report_name="new.json")


def test_a_table_is_not_skipped_by_missing_skip(two: Report, policy_file: PolicyFile) -> None:
    """missing = "skip" covers an absent metric, not a path that names a table."""
    with pytest.raises(FmauditError, match=r"'entropy' is a table, not a number"):
        run_gate(two, policy_file('[[check]]\nmetric = "entropy"\nmax = 1\nmissing = "skip"\n'))


def test_gate_stays_light() -> None:
    """The gate reads reports through fmaudit.report.load without importing the renderer."""
    import subprocess

    probe = ("import sys\nfrom fmaudit.cli import main\ntry:\n"
             "    main(['-q', 'gate', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe, str(TWO)], capture_output=True, text=True,
                          env=child_env(), timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr
