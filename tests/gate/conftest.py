"""Shared helpers of the gate tests: the report fixtures, policy files, and running the CLI."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture
def two() -> dict[str, Any]:
    """A near-uniform ``dna`` ensemble and a healthy ``text`` one, three members each."""
    return copy.deepcopy(load_fixture("report-two.json"))


@pytest.fixture
def baseline_two() -> dict[str, Any]:
    """The same ensembles one release ago (dna entropy 0.03 lower)."""
    return copy.deepcopy(load_fixture("baseline-two.json"))


@pytest.fixture
def single() -> dict[str, Any]:
    """One healthy ``text`` ensemble with one member: pair statistics are null."""
    return copy.deepcopy(load_fixture("report-single.json"))


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh policy file and return its path."""
    counter = iter(range(1_000_000))

    def write(text: str) -> Path:
        path = tmp_path / f"policy{next(counter)}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``fmaudit ARGS`` through the real entry point; return (exit code, stdout, stderr)."""
    from fmaudit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run
