"""Resume state of an audit's long passes, so an interrupted ``fmaudit report --out`` goes on.

The prediction pass streams sums (see :mod:`fmaudit.metrics.base`), so its whole state between
two batches is a handful of float64 tensors: every ``every_s`` seconds it writes them, with the
number of batches done, to ``OUT/.fmaudit-resume/``. A re-run of the same command loads them,
skips those batches and adds the rest in the same order, so its report equals the uninterrupted
one exactly. The Fisher pass is saved per member, when the member is done.

Each file is safetensors (no pickle), written atomically, and carries the digest of everything
that decides its content (members' weights, corpus, windows, settings, process rank and count).
State from another run is ignored with a warning and overwritten; a finished report removes the
folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmaudit import progress
from fmaudit.io import atomic_path

STATE_DIR = ".fmaudit-resume"
_FORMAT = 1  # bump when the meaning of a saved state changes


def digest(key: Any) -> str:
    """sha256 of the canonical JSON of ``key`` (what a saved state must match)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_stamp(path: Path) -> list:
    """``[resolved path, size, mtime_ns, inode, ctime_ns]`` of a file: a changed checkpoint or
    corpus changes it without reading gigabytes. The inode and the change time catch a file
    replaced by a copy that keeps size and modification time (``cp -a``, ``rsync -a``,
    ``touch -r``: none of them can set the change time)."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return [str(resolved), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


@dataclass
class Saved:
    """A loaded state: ``progress`` (batches done), its tensors and its JSON ``extra``."""

    progress: int
    tensors: dict[str, torch.Tensor]
    extra: Any


class ResumeStore:
    """One process's resume files in ``folder``, for one run identified by ``key``.

    Args:
        folder: ``OUT/.fmaudit-resume``.
        key: JSON-able description of the run (digested; see :func:`digest`).
        rank, world: this process and the process count (each process saves its own share).
        every_s: seconds between two saves of a streaming pass (0: no resume state at all).
        prefix: starts every file name (one store per ensemble shares the folder).
    """

    def __init__(self, folder: Path, key: Any, rank: int = 0, world: int = 1,
                 every_s: float = 300.0, prefix: str = "run") -> None:
        self.folder = Path(folder)
        self.prefix = prefix
        self.rank, self.world = rank, world
        self.every_s = float(every_s)
        self.digest = digest({"format": _FORMAT, "key": key, "rank": rank, "world": world})
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def path(self, part: str) -> Path:
        return self.folder / f"{self.prefix}-{part}.rank{self.rank}-of-{self.world}.safetensors"

    def _digest(self, part_key: Any) -> str:
        return digest({"run": self.digest, "part": part_key})

    def load(self, part: str, part_key: Any = None) -> Saved | None:
        """The saved state of ``part``, or None (none, another run's, or unreadable: warned).
        ``part_key``: what else decides this part (as given to :meth:`save`)."""
        from safetensors import SafetensorError, safe_open

        path = self.path(part)
        if not self.enabled:
            return None
        if not path.is_file():
            others = self.folder.glob(f"{self.prefix}-{part}.rank*-of-*.safetensors")
            if any(p.is_file() and not p.name.endswith(f"-of-{self.world}.safetensors")
                   for p in others):
                self.ignore(part, "it was saved by a run with another process count")
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("digest") != self._digest(part_key):
                    self.ignore(part, "it belongs to a run with other inputs or settings")
                    return None
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            done = int(meta["progress"])
            if done < 0:
                raise ValueError(f"{done} batches done")
            return Saved(done, tensors, json.loads(meta.get("extra", "null")))
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            self.ignore(part, f"it cannot be read ({exc})")
            return None

    def ignore(self, part: str, why: str) -> None:
        """Say (once per store) that ``part``'s saved state is not used, and why."""
        if not self._warned:
            progress.warn(f"{self.path(part)}: not resuming from this state, {why}; starting "
                          "afresh")
            self._warned = True

    def save(self, part: str, progress_done: int, tensors: dict[str, torch.Tensor],
             extra: Any = None, part_key: Any = None) -> None:
        """Write ``part``'s state atomically: ``progress_done`` batches are in it. A failed
        write is warned about and turns saving off for this store."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"digest": self._digest(part_key), "progress": str(int(progress_done)),
                "extra": json.dumps(extra)}
        host = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
        try:
            with atomic_path(self.path(part)) as tmp:
                save_file(host, str(tmp), metadata=meta)
        except (OSError, SafetensorError) as exc:  # a full disk, a folder in the way...
            # resuming is a convenience: the audit goes on, and says what it gives up
            progress.warn(f"{self.path(part)}: cannot save resume state ({exc}); going on "
                          "without it (an interruption now restarts this ensemble's passes)")
            self.every_s = 0.0


def _processes_with(flag: bool) -> tuple[int, int]:
    """How many processes have ``flag`` set (all-reduced), and how many there are."""
    from fmaudit.passes.distributed import all_reduce_sum, rank_and_world

    _, world = rank_and_world()
    if world == 1:
        return int(flag), 1
    total = all_reduce_sum(torch.tensor([int(flag)], dtype=torch.float64))
    return int(total.item()), world


def on_every_process(flag: bool) -> bool:
    """True when ``flag`` is true in every process: processes that resume must all resume the
    same part, or their collective operations no longer pair up."""
    count, world = _processes_with(flag)
    return count == world


def on_any_process(flag: bool) -> bool:
    """True when ``flag`` is true in some process."""
    return _processes_with(flag)[0] > 0


def clear_audit_state(out: Path) -> None:
    """Remove the resume state under the output folder ``out`` (every process's)."""
    shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)


class Cadence:
    """``due()`` is True once every ``every_s`` seconds (never for ``every_s <= 0``)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = float(every_s)
        self._last = time.monotonic()

    def due(self) -> bool:
        if self.every_s <= 0:
            return False
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            return True
        return False
