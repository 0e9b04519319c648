"""The streaming-accumulator base: a flat float64 tensor of sums.

Every accumulator keeps only sums and counts (never per-position values), so its memory does not
depend on how many positions it has seen, and two accumulators over disjoint data combine by
adding their sums. That is what makes them mergeable across processes: all-reduce (sum)
``acc.sums()`` and ``acc.load_sums(...)`` the result, or ``merge`` objects in one process.

The sums live on the device of the tensors fed to ``update`` (so an accelerator never waits for a
per-batch copy to the host); ``sums()``, ``state_dict()`` and ``compute()`` bring them to the CPU.
"""

from __future__ import annotations

import torch

__all__ = ["EmptyAccumulatorError", "SumAccumulator"]


class EmptyAccumulatorError(ValueError):
    """``compute()`` was called before any position was accumulated."""


class SumAccumulator:
    """Base class: ``self._sums`` is a 1-D float64 tensor; subclasses define its layout.

    Subclasses implement ``_config()`` (the settings that must match for sums to be addable),
    ``update(...)`` (adding a batch's sums with :meth:`_add`) and ``compute()`` (reading
    :meth:`_host_sums`).
    """

    def __init__(self, size: int) -> None:
        self._sums = torch.zeros(size, dtype=torch.float64)

    # -- subclass hooks -------------------------------------------------------------------
    def _config(self) -> dict:
        raise NotImplementedError

    # -- shared state handling ------------------------------------------------------------
    def _add(self, batch: torch.Tensor) -> None:
        """Add one batch's sums (float64 ``[S]``), on the batch's device: no host transfer."""
        if self._sums.device != batch.device:
            self._sums = self._sums.to(batch.device)
        self._sums += batch

    def _host_sums(self) -> torch.Tensor:
        """The sums on the CPU (the one device-to-host copy, at compute time)."""
        return self._sums.cpu()

    def sums(self) -> torch.Tensor:
        """A CPU copy of the flat float64 sums (shape ``[S]``), e.g. to all-reduce across
        processes.

        Example (with accelerate)::

            total = accelerator.reduce(acc.sums().to(accelerator.device), reduction="sum")
            acc.load_sums(total)
        """
        return self._sums.detach().to("cpu", copy=True)

    def load_sums(self, sums: torch.Tensor) -> None:
        """Replace the sums (e.g. by their all-reduced total).

        Raises:
            ValueError: ``sums`` does not have this accumulator's shape.
        """
        if tuple(sums.shape) != tuple(self._sums.shape):
            raise ValueError(
                f"sums of shape {tuple(sums.shape)} do not fit this accumulator "
                f"(expected {tuple(self._sums.shape)})"
            )
        self._sums = sums.detach().to(device="cpu", dtype=torch.float64).clone()

    def merge(self, other: SumAccumulator) -> SumAccumulator:
        """Add ``other``'s sums to ours (same class and settings); returns ``self``.

        Raises:
            ValueError: different accumulator types or settings.
        """
        if type(other) is not type(self) or other._config() != self._config():
            raise ValueError(
                f"cannot merge {type(other).__name__}{other._config()} into "
                f"{type(self).__name__}{self._config()}: settings differ"
            )
        self._sums += other._sums.to(self._sums.device)
        return self

    def reset(self) -> None:
        """Zero all sums."""
        self._sums.zero_()

    def state_dict(self) -> dict:
        """JSON-serialisable state: ``{"config": {...}, "sums": [float, ...]}``.

        float64 values round-trip exactly through JSON (Python's repr is shortest round-trip).
        """
        return {"config": self._config(), "sums": self._host_sums().tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` output.

        Raises:
            ValueError: the saved settings differ from this accumulator's.
        """
        config = state.get("config")
        if _jsonish(config) != _jsonish(self._config()):
            raise ValueError(f"saved accumulator settings {config} differ from {self._config()}")
        self.load_sums(torch.tensor(state["sums"], dtype=torch.float64))


def _jsonish(obj: object) -> object:
    """Normalise tuples to lists so a config compares equal after a JSON round trip."""
    if isinstance(obj, dict):
        return {k: _jsonish(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonish(v) for v in obj]
    return obj
