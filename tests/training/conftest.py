"""Fixtures for the training tests: one thread per process (the CI machine has 2 shared cores
and tiny models run fastest single-threaded) and trained tiny ensembles built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.cliutil import child_env


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env() -> dict[str, str]:
    """Environment for ``python -m fmaudit`` / torchrun children: src on the path, 1 thread."""
    return child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FMAUDIT_QUIET="1",
                     TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="session")
def dna_ensemble(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The full ``tiny`` recipe, seeds 0..2, on the bundled DNA (the README demo's setting)."""
    from fmaudit.corpus import bundled
    from fmaudit.training import train_ensemble

    out = tmp_path_factory.mktemp("dna") / "runs"
    return out, train_ensemble(bundled("dna"), out, "tiny", seeds=3)


@pytest.fixture(scope="session")
def text_ensemble(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The full ``tiny`` recipe, seeds 0..1, on the bundled English text (bpe:4101)."""
    from fmaudit.corpus import bundled
    from fmaudit.training import train_ensemble

    out = tmp_path_factory.mktemp("text") / "runs"
    return out, train_ensemble(bundled("text"), out, "tiny", seeds=2)
