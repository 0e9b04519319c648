"""CLI conventions shared by every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmaudit import __version__
from fmaudit.cli import COMMANDS, main
from tests.cliutil import child_env


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and __version__ in out


def test_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    args = [name, "stats", "--help"] if name == "corpus" else [name, "--help"]
    code, out, _ = run(args, capsys)
    assert code == 0 and "Usage" in out


def test_unknown_command_is_a_usage_error(capsys):
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and "frobnicate" in err


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["train"],  # missing --out
    ["report", "--nope"],
    ["report", "m", "--samples", "abc"],
    ["gate"],
    ["gate", "r.json", "--format", "xml"],
])
def test_usage_errors_are_one_line(args, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmaudit: error: "), err
    assert "--help" in lines[0] or args == ["frobnicate"]


def test_help_is_light():
    """`fmaudit --help` must not import torch or transformers (instant help)."""
    code = ("import sys; from fmaudit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


def test_bad_input_is_one_line_without_traceback(capsys, tmp_path):
    code, _, err = run(["corpus", "stats", str(tmp_path / "missing.fa")], capsys)
    assert code == 2
    assert "missing.fa" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    """--debug adds the traceback; bad input still exits 2 (1 would read as a failed gate)."""
    proc = subprocess.run([sys.executable, "-m", "fmaudit", "--debug", "corpus", "stats",
                           str(tmp_path / "missing.fa")], capture_output=True, text=True,
                          env=child_env())
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fmaudit: error: ")
    proc = subprocess.run([sys.executable, "-m", "fmaudit", "--debug", "gate",
                           str(tmp_path / "missing.json")], capture_output=True, text=True,
                          env=child_env())
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_a_finaliser_swallows_still_ends_the_run(capsys, monkeypatch):
    """Python prints and drops a KeyboardInterrupt raised inside a __del__ (a library's
    finaliser run by the garbage collector when Ctrl-C lands); the run must not then finish as
    if nothing happened."""
    import signal
    from pathlib import Path

    import fmaudit.gate
    from fmaudit.cli import _on_interrupt

    class Finaliser:
        def __del__(self) -> None:
            _on_interrupt(signal.SIGINT, None)  # what the SIGINT handler does, inside __del__

    real = fmaudit.gate.run_gate

    def run_gate(*args, **kwargs):
        obj = Finaliser()
        del obj  # the KeyboardInterrupt is swallowed here ("Exception ignored in ...")
        return real(*args, **kwargs)

    monkeypatch.setattr(fmaudit.gate, "run_gate", run_gate)
    report = Path(__file__).parents[1] / "gate" / "fixtures" / "report-two.json"
    code, _, err = run(["gate", str(report)], capsys)
    assert code == 130 and "fmaudit: interrupted" in err
    assert signal.getsignal(signal.SIGINT) is not _on_interrupt  # restored after main()
