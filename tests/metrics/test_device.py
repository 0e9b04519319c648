"""Accumulators on a CUDA device: the same sums as on the CPU, no host synchronisation inside
update(), NaN/inf reported by compute(). Skipped without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from fmaudit.metrics import DisagreementAccumulator, NonFiniteLogitsError, PredictionAccumulator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOP_PS = [0.05, 0.1, 0.3, 0.5, 0.9, 1.0]


def make_batch(seed: int, n: int = 300, v: int = 4101):
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, v, generator=gen)
    members = [shared + 0.5 * torch.randn(n, v, generator=gen) for _ in range(3)]
    return members, torch.randint(0, v, (n,), generator=gen)


def test_cuda_sums_equal_cpu_sums_and_update_never_syncs():
    members, labels = make_batch(0)
    v = members[0].shape[1]
    cpu_pred, cpu_dis = PredictionAccumulator(v), DisagreementAccumulator(3, TOP_PS)
    gpu_pred, gpu_dis = PredictionAccumulator(v), DisagreementAccumulator(3, TOP_PS)
    cuda, cuda_labels = [m.cuda() for m in members], labels.cuda()
    gpu_pred.update(cuda[0], cuda_labels)  # first update moves the sums to the device
    gpu_dis.update(cuda)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside update() raises
    try:
        for _ in range(2):
            gpu_pred.update(cuda[0], cuda_labels)
            gpu_dis.update(cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(3):
        cpu_pred.update(members[0], labels)
        cpu_dis.update(members)
    torch.testing.assert_close(gpu_pred.sums(), cpu_pred.sums(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu_dis.sums(), cpu_dis.sums(), rtol=1e-9, atol=1e-9)


def test_cuda_nan_is_counted_and_raised_by_compute():
    members, labels = make_batch(1, n=20, v=50)
    members[1][4, 3] = math.nan
    pred, dis = PredictionAccumulator(50), DisagreementAccumulator(3, TOP_PS)
    pred.update(members[1].cuda(), labels.cuda())  # no raise: that would need a host sync
    dis.update([m.cuda() for m in members])
    with pytest.raises(NonFiniteLogitsError, match="1 of 20"):
        pred.compute()
    with pytest.raises(NonFiniteLogitsError, match="1 of 20"):
        dis.compute()
