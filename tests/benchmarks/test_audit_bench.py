"""The benchmark in its CI-sized form: it runs, its ratios are computed from its own timings,
and the audit's peak memory (measured RSS, a fresh process per size) stays flat when the number
of evaluated windows grows 4x."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cliutil import child_env

ROOT = Path(__file__).parents[2]
HAVE_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is not None  # torch.compile on CPU
pytestmark = pytest.mark.slow


def test_benchmark_small_form_and_flat_memory():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "audit_bench.py"), "--size", "tiny",
         "--members", "2", "--samples", "16,64", "--seq-len", "64", "--fisher-windows", "8",
         "--train-steps", "8", "--static-shape", "300x32", "--peak-tflops", "50", "--alt-js",
         "--profile", "1", "--static-workers", "1,2", "--json"],
        capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    small, large = out["runs"]
    assert (small["samples"], large["samples"]) == (16, 64)
    assert large["positions"] > 3 * small["positions"]
    for run, ratio in zip(out["runs"], out["ratio_audit_over_forward"], strict=True):
        assert ratio == pytest.approx(run["b_audit_s"] / run["a_forward_s"])
        assert run["a_forward_s"] > 0 and run["d_fisher_s"] > 0
        # model FLOPs over a 50 TFLOP/s peak: a positive share, far below 1 on two CPU cores
        assert 0 < run["audit_mfu"] < 0.5 and 0 < run["fisher_mfu"] < 0.5
        # (b) through the sparse path, and again through the compiled fused top-p JS kernel
        # (inductor's C++ backend here; per-level where it cannot compile)
        assert run["js_path"] == "sparse" and run["b_audit_alt_js_s"] > 0
        assert run["alt_js_path"] == ("fused" if HAVE_COMPILER else "per-level")
    assert out["ratio_fisher_over_backward"] == pytest.approx(
        [r["d_fisher_s"] / r["c_forward_backward_s"] for r in out["runs"]])
    _check_mfu(out["runs"], members=2, seq_len=64, peak=50e12)
    assert "aten::" in small["profile"] and "profile" not in large  # the first size only
    assert out["ratio_audit_alt_js_over_forward"] == pytest.approx(
        [r["b_audit_alt_js_s"] / r["a_forward_s"] for r in out["runs"]])
    assert out["static_embeddings_s"] > 0 and out["static_shape"] == [300, 32]
    by_workers = out["static_embeddings_s_by_workers"]
    assert list(by_workers) == ["1", "2"] and min(by_workers.values()) > 0
    training = out["training"]
    assert training["ratio"] == pytest.approx(training["fmaudit_tokens_per_s"]
                                              / training["trainer_tokens_per_s"])
    assert training["corpus"] == "dna" and 0 < training["fmaudit_mfu"] < 0.5
    # the audit never holds [members x positions x vocab]: 4x the windows, < 10% more memory
    assert large["peak_rss_mb"] < 1.10 * small["peak_rss_mb"], out


def test_js_benchmark_times_every_path_to_the_same_distances():
    """benchmarks/js_bench.py: each top-p JS implementation, the same sums (all five paths
    compute them independently: sparse, per-level entropy form, compiled fused forms)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "js_bench.py"), "--device", "cpu",
         "--members", "3", "--positions", "40", "--vocab", "300", "--repeats", "2", "--json"],
        capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    runs = {r["path"]: r for r in out["runs"]}
    assert list(runs) == ["sparse", "per-level", "fused", "fused-dynamic", "fused-by-level"]
    for path, r in runs.items():
        assert r["positions_per_s"] == pytest.approx(40 / r["seconds"])
        assert r["compiled"] is (HAVE_COMPILER if path.startswith("fused") else None)
        assert len(r["js_means"]) == 11 and all(0 < m < 1 for m in r["js_means"])
        assert r["max_abs_diff_from_first"] < 1e-12, path
    # truncating to fewer tokens makes members disagree more: the distance falls with top-p
    means = runs["sparse"]["js_means"]
    assert means == sorted(means, reverse=True)


@pytest.mark.parametrize(("script", "args", "named"), [
    ("audit_bench.py", ["--static-workers", "two"], "--static-workers"),
    ("audit_bench.py", ["--static-workers", "0"], "--static-workers"),
    ("js_bench.py", ["--device", "cpu", "--paths", "sparse,fast"], "--paths"),
])
def test_benchmarks_refuse_bad_arguments_in_one_line(script, args, named):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert named in last and "Traceback" not in proc.stderr


def _check_mfu(runs: list, members: int, seq_len: int, peak: float) -> None:
    """MFU from the run's own counts: the audit is a forward with the head at the predicted
    positions, the Fisher pass a forward + backward (3x) with the head at one token a window;
    FLOPs per token from fmaudit.models.flops (checked against PyTorch's counter elsewhere)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import audit_bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch

    from fmaudit.models.flops import forward_flops_per_token

    model = audit_bench._models("tiny", 1, 4101, seq_len, torch.device("cpu"))[0]
    for run in runs:
        tokens = run["audit_tokens_per_s"] * run["b_audit_s"]
        flops = forward_flops_per_token(model, seq_len, run["positions"] * members / tokens)
        assert run["audit_mfu"] == pytest.approx(flops * run["audit_tokens_per_s"] / peak)
        tokens = run["fisher_tokens_per_s"] * run["d_fisher_s"]
        flops = forward_flops_per_token(model, seq_len, run["fisher_windows"] * members / tokens)
        assert run["fisher_mfu"] == pytest.approx(3 * flops * run["fisher_tokens_per_s"] / peak)


def _env() -> dict:
    return child_env(OMP_NUM_THREADS="2")


def test_training_benchmark_uses_synthetic_dna_when_a_batch_does_not_fit(tmp_path: Path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_vs_trainer
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    *_, batches, _, corpus = train_vs_trainer._batches("bert-4m", "auto", 2, tmp_path)
    assert corpus == "synthetic"  # 96 windows of 512 6-mers do not fit the bundled 200 kb
    assert [tuple(b.input_ids.shape) for b in batches] == [(96, 512), (96, 512)]
    assert all(b.n_tokens == 96 * 512 for b in batches)  # no padding: the windows are full
    small = train_vs_trainer._batches("tiny", "auto", 2, tmp_path)
    assert small[-1] == "dna"
