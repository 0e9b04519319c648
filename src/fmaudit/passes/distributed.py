"""The few collective operations the audit needs, through accelerate's process state.

``accelerate launch`` and ``torchrun`` set the environment; ``PartialState`` joins the process
group (gloo on CPU, nccl on GPU). Every helper is the identity in a single process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def state() -> Any:
    from accelerate import PartialState

    # Without a GPU, accelerate only joins a torchrun/accelerate-launch process group (gloo)
    # when told it runs on CPU.
    return PartialState(cpu=not torch.cuda.is_available())


def rank_and_world() -> tuple[int, int]:
    s = state()
    return s.process_index, s.num_processes


def is_main() -> bool:
    return state().is_main_process


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (returned on the tensor's original device)."""
    s = state()
    if s.num_processes == 1:
        return t
    import torch.distributed as dist

    device = t.device
    work = t.to(s.device) if s.device.type == "cuda" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(device)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (small Python objects only)."""
    s = state()
    if s.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * s.num_processes
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if state().num_processes > 1:
        state().wait_for_everyone()
