"""Device and precision helpers shared by the passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """bf16/fp16 autocast on accelerators; a no-op for float32 or on CPU."""
    if dtype is None or dtype == torch.float32 or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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
