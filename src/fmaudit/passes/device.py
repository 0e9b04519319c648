"""Device and precision helpers shared by the passes."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """bf16/fp16 autocast on accelerators; a no-op for float32 or on CPU."""
    if dtype is None or dtype == torch.float32 or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
