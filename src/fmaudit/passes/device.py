"""Device and precision helpers shared by the passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import torch

_Movable = TypeVar("_Movable")  # a tensor, or a batch with pin_memory() and to()


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """bf16/fp16 autocast on accelerators; a no-op for float32 or on CPU."""
    if dtype is None or dtype == torch.float32 or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(x: _Movable, device: torch.device) -> _Movable:
    """``x`` on ``device`` without making the host wait: to a CUDA device from page-locked
    memory with ``non_blocking=True`` (the copy is queued on the stream ahead of the kernels
    that read it); elsewhere, or for a tensor already on a device (which cannot be pinned), a
    plain ``.to(device)`` (a no-op when it is there already)."""
    if device.type == "cuda" and (not isinstance(x, torch.Tensor) or x.device.type == "cpu"):
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


@contextlib.contextmanager
def reduced_precision_matmuls(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """float32 matmuls in TF32 on a CUDA device when a half-precision ``dtype`` was asked for;
    for code that cannot run under autocast. TF32 keeps 10 mantissa bits (bf16 7), so it is no
    less precise than the autocast it replaces. Elsewhere: unchanged float32."""
    if dtype is None or dtype == torch.float32 or device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
