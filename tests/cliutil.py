"""Running the CLI in-process and checking the one-line error contract (shared by the tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fmaudit.cli import main


def run_main(argv: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``fmaudit ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    """Exit 2, nothing on stdout, exactly one ``fmaudit: error:`` line containing ``fragments``."""
    assert code == 2, (out, err)
    assert out == ""
    assert err.startswith("fmaudit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


SRC = Path(__file__).resolve().parents[1] / "src"


def child_env(**overrides: str) -> dict[str, str]:
    """Environment for a ``python -m fmaudit`` child: this checkout's ``src`` first on the
    path, whatever the caller's PYTHONPATH already holds kept after it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.update(overrides)
    return env
