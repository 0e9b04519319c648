"""A 2-process audit (torchrun, gloo on CPU) equals the single-process one to 1e-6."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cliutil import child_env
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


ARGS = ["-q", "report", "fam/seed<0..2>", "--corpus", "g.fa", "--samples", "13",
        "--seq-len", "32", "--batch-size", "4", "--fisher-samples", "7", "--k", "1,5,10",
        "--gate", "policy.toml"]
# checks on metrics only the main process computes (static embeddings) and on reduced sums
POLICY = """
[[check]]
metric = "static_embeddings.topk_overlap@k=5"
min = 0.0
[[check]]
metric = "entropy.normalized"
max = 1.0
"""
# accelerate's `--multi_gpu` launcher is torch elastic underneath; on a machine without GPUs
# fmaudit's PartialState(cpu=True) joins a gloo group (accelerate's `--cpu` flag alone starts
# one process: its multi-CPU mode goes through mpirun)
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


def _env() -> dict:
    # CPU and gloo even where a GPU is present: two ranks cannot share one GPU under NCCL
    return child_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def _report(folder: Path) -> dict:
    rep = json.loads((folder / "report.json").read_text())
    for key in ("created", "command", "timing", "tool"):
        rep.pop(key)
    return rep


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict]:
    """The family, the corpus and the single-process report."""
    root = tmp_path_factory.mktemp("distributed")
    save_family(root / "fam", "bert", seeds=(0, 1, 2))
    (root / "g.fa").write_text("".join(f">chr{i}\n{random_dna(6000, i)}\n" for i in (1, 2)))
    (root / "policy.toml").write_text(POLICY)
    # 13 windows and 7 Fisher windows: neither divides by 2, so an uneven split is exercised
    one = subprocess.run([sys.executable, "-m", "fmaudit", *ARGS, "--out", "one"], cwd=root,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    rep = _report(root / "one")
    assert rep["settings"].pop("processes") == 1
    assert rep["ensembles"]["model"]["corpus"]["windows"] == 13
    assert rep["gate"]["passed"] and len(rep["gate"]["checks"]) == 2
    return root, rep


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_equal_one(single, launcher: str):
    root, one = single
    out = f"two-{launcher}"
    two = subprocess.run([sys.executable, *LAUNCHERS[launcher], "-m", "fmaudit", *ARGS,
                          "--out", out], cwd=root, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    rep = _report(root / out)
    assert rep["settings"].pop("processes") == 2
    assert _close(one, rep) == []


def test_batch_fisher_estimator_two_processes_equal_one(single):
    """The batch estimator squares batch-mean gradients, so it depends on which windows share
    a batch: the Fisher pass deals the single-process batches whole to the processes."""
    root, _ = single
    args = [*ARGS[:ARGS.index("--gate")], "--analyses", "fisher", "--fisher-estimator", "batch"]
    reports = {}
    for name, launcher in (("one", []), ("two", LAUNCHERS["torchrun"])):
        out = f"batch-{name}"
        run = subprocess.run([sys.executable, *launcher, "-m", "fmaudit", *args, "--out", out],
                             cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        reports[name] = _report(root / out)
        reports[name]["settings"].pop("processes")
    assert reports["one"]["ensembles"]["model"]["fisher"]["estimator"] == "batch"
    assert _close(reports["one"], reports["two"]) == []


def test_killed_two_process_audit_resumes_to_the_same_report(single, tmp_path):
    """Both processes save their own share; killed in the second member's Fisher pass, the
    re-run reads back every process's prediction sums and the first member's Fisher result,
    runs only the rest, and reduces to the single-process report."""
    root, one = single
    out = root / "two-resumed"
    probe = str(Path(__file__).with_name("fmaudit_probe.py"))
    command = [sys.executable, *LAUNCHERS["torchrun"], probe, *ARGS, "--out", str(out)]
    killed = subprocess.run(command, cwd=root, env={**_env(), "FMAUDIT_PROBE": "kill-in-fisher:2"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and not (out / "report.json").exists()
    state = sorted(p.name for p in (out / ".fmaudit-resume").iterdir() if p.suffix != ".tmp")
    assert state == [f"e0-{part}.rank{r}-of-2.safetensors"
                     for part in ("fisher0", "predictions") for r in (0, 1)]
    # the same state with one process's files lost (a kill while the main process wrote the
    # report used to leave that): nobody resumes alone, or the all-reduces would not pair up
    half = root / "two-resumed-half"
    shutil.copytree(out, half)
    for path in (half / ".fmaudit-resume").glob("*rank1-of-2*"):
        path.unlink()
    for folder, fisher, batches in ((out, 2, 0), (half, 3, 2)):
        resumed = subprocess.run([*command[:-1], str(folder)], cwd=root,
                                 env={**_env(), "FMAUDIT_PROBE": "count"},
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        for rank in (0, 1):  # what each process ran again: all of it without a common state
            assert f"probe rank {rank}: fisher {fisher} batches {batches}" in resumed.stderr
        rep = _report(folder)
        assert rep["settings"].pop("processes") == 2
        assert _close(one, rep) == []
        assert not (folder / ".fmaudit-resume").exists()
