"""A 2-process audit (torchrun, gloo on CPU) equals the single-process one to 1e-6."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tinymodels import random_dna, save_family

pytestmark = pytest.mark.slow


def _close(a, b, path="") -> list[str]:
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys differ {set(a) ^ set(b)}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: lengths differ"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, int | float):
        return [] if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_two_processes_equal_one(tmp_path: Path):
    save_family(tmp_path / "fam", "bert", seeds=(0, 1, 2))
    (tmp_path / "g.fa").write_text("".join(f">chr{i}\n{random_dna(6000, i)}\n" for i in (1, 2)))
    # 13 windows and 7 Fisher windows: neither divides by 2, so an uneven split is exercised
    args = ["-q", "report", "fam/seed<0..2>", "--corpus", "g.fa", "--samples", "13",
            "--seq-len", "32", "--batch-size", "4", "--fisher-samples", "7", "--k", "1,5,10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2]
                                                                      / "src")}
    one = subprocess.run([sys.executable, "-m", "fmaudit", *args, "--out", "one"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "fmaudit", *args, "--out", "two"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    reports = []
    for name in ("one", "two"):
        rep = json.loads((tmp_path / name / "report.json").read_text())
        assert rep["settings"].pop("processes") == (1 if name == "one" else 2)
        for key in ("created", "command", "timing", "tool"):
            rep.pop(key)
        reports.append(rep)
    assert reports[0]["ensembles"]["model"]["corpus"]["windows"] == 13
    assert _close(reports[0], reports[1]) == []
