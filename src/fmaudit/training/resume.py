"""Resume state: one explicit folder per member, ``OUT/.work/seed<k>/state/``, written atomically.

Contents:

* ``state.json``: step (optimiser steps done = the data position, since the stream is a pure
  function of the step), data-stream fingerprint chain, tokens seen, loss history, wall time,
  recipe fingerprint and the RNG rule (dropout generators are re-derived every step from
  (seed, step, process index), so no RNG has hidden state across steps);
* ``training_state.pt``: model, optimiser and scheduler state dicts. It is our own file, written
  with ``torch.save`` and read back with ``torch.load(weights_only=True)`` (tensors, numbers and
  lists only; no pickled code is executed).

The folder is built beside its final name and renamed in one step (:func:`fmaudit.io.atomic_dir`),
so a kill at any moment leaves either the previous complete state or the new one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError
from fmaudit.io import atomic_dir

STATE_FORMAT = 1
STATE_JSON = "state.json"
TENSORS = "training_state.pt"
RNG_RULE = ("dropout generators re-seeded at every optimiser step with "
            "derive_seed(seed, step, process_index); masks and order are functions of the step")


@dataclass
class Progress:
    """Everything besides tensors that a resumed member needs to continue as if never stopped."""

    step: int = 0  # optimiser steps done; also the next global batch to draw
    chain: str | None = None  # StreamFingerprint state
    tokens: int = 0  # non-pad tokens seen
    targets: int = 0  # loss terms seen (masked tokens for mlm)
    elapsed_s: float = 0.0
    train_losses: list[float] = field(default_factory=list)  # per optimiser step (nats/term)
    train_targets: list[int] = field(default_factory=list)  # loss terms per optimiser step
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step", "heldout_loss"}


def state_dir(work_dir: Path) -> Path:
    return work_dir / "state"


def save_state(work_dir: Path, progress: Progress, tensors: dict[str, Any], *, seed: int,
               data_seed: int, recipe_fingerprint: str) -> None:
    """Write the state folder atomically (call on the main process only)."""
    import torch

    meta = {"format": STATE_FORMAT, "seed": seed, "data_seed": data_seed,
            "recipe_fingerprint": recipe_fingerprint, "rng": RNG_RULE, **asdict(progress)}
    with atomic_dir(state_dir(work_dir)) as tmp:
        torch.save(tensors, tmp / TENSORS)
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")


def load_state(work_dir: Path, *, seed: int, data_seed: int, recipe_fingerprint: str
               ) -> tuple[Progress, dict[str, Any]] | None:
    """The saved state, or None when there is none.

    Raises:
        FmauditError: the state belongs to another recipe/seed, or is unreadable.
    """
    import torch

    folder = state_dir(work_dir)
    meta_path = folder / STATE_JSON
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise FmauditError(f"{meta_path}: unreadable resume state ({exc}; delete {work_dir} "
                           "to restart this member)") from None
    if meta.get("format") != STATE_FORMAT:
        raise FmauditError(f"{meta_path}: resume state format {meta.get('format')!r} is not "
                           f"{STATE_FORMAT} (delete {work_dir} to restart this member)")
    expected = {"seed": seed, "data_seed": data_seed, "recipe_fingerprint": recipe_fingerprint}
    for key, want in expected.items():
        if meta.get(key) != want:
            raise FmauditError(f"{meta_path}: resume state has {key} {meta.get(key)!r}, this "
                               f"run {want!r} (pass --overwrite to start again)")
    progress = Progress(**{k: meta[k] for k in Progress.__dataclass_fields__})
    try:
        tensors = torch.load(folder / TENSORS, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/IO failure means the same thing to the user
        raise FmauditError(f"{folder / TENSORS}: unreadable resume state ({exc}; delete "
                           f"{work_dir} to restart this member)") from None
    return progress, tensors


def clear_training_state(work_dir: Path) -> None:
    """Remove a member's work folder (after its final checkpoint is in place)."""
    if work_dir.exists():
        shutil.rmtree(work_dir, ignore_errors=True)
