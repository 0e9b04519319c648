"""The README's two commands, CI wiring and lint: what a fresh clone relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```sh\n(.*?)```", text, re.S)
    assert block, "README has no Quick start sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_commands():
    main_cmd, test_cmd = quick_start()
    for cmd in (main_cmd, test_cmd):
        # the CPU build served here; never a bare torch that would pull CUDA wheels
        assert "torch==2.13.0" in cmd
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert "fmaudit demo" in main_cmd
    assert "pytest" in test_cmd and "[test]" in test_cmd


def test_ci_runs_the_readme_test_command(tmp_path):
    """.ci/run, with its final eval swapped for a print, yields the README's test command."""
    script = (ROOT / ".ci" / "run").read_text()
    assert script.rstrip().endswith('eval "$cmd"')
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(script.replace('eval "$cmd"', 'printf %s "$cmd"'))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines()[-1] == quick_start()[1]


def test_recipes_are_mirrored():
    shipped = ROOT / "src" / "fmaudit" / "recipes"
    for path in sorted(shipped.glob("*.toml")):
        assert (ROOT / "recipes" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff")
                    .exists(), reason="ruff is part of the test extras")
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "src", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
