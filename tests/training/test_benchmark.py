"""benchmarks/train_vs_trainer.py runs in its small form and compares like with like."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import subprocess_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_vs_trainer.py"


@pytest.mark.slow
def test_benchmark_small_form() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--recipe", "tiny", "--steps", "12",
                           "--json"], env=subprocess_env(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is only the JSON (the Trainer's prints go away)
    assert result["timed_steps"] == 12 - 3 - 2
    assert result["tokens_timed"] == result["timed_steps"] * 16 * 64
    for side in ("fmaudit", "trainer"):
        assert result[side]["seconds"] > 0
        assert result[side]["tokens_per_s"] == pytest.approx(
            result["tokens_timed"] / result[side]["seconds"])
    assert result["ratio"] == pytest.approx(
        result["fmaudit"]["tokens_per_s"] / result["trainer"]["tokens_per_s"])
    # same model, batches, optimiser and schedule: the two loops reach the same weights
    # (bf16 autocast on a GPU rounds the two loops' different kernel orders to ~3 digits)
    assert result["max_abs_weight_diff"] < (1e-4 if result["mixed_precision"] == "no" else 3e-2)


def test_timed_window_covers_exactly_the_timed_steps() -> None:
    """Step i ends at times[i]; with distinct step durations, the window's seconds are the sum
    of the timed steps' durations and nothing else."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_vs_trainer
    finally:
        sys.path.remove(str(SCRIPT.parent))
    durations = [2.0**i for i in range(12)]  # every subset has its own sum
    ends = [sum(durations[: i + 1]) for i in range(12)]
    timed = range(4, 10)
    assert train_vs_trainer.timed_seconds(ends, timed) == sum(durations[4:10])
