"""Predictive metrics against numpy/scipy, invariances and streaming == one-shot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from fmaudit.metrics import (
    EmptyAccumulatorError,
    NonFiniteLogitsError,
    PredictionAccumulator,
    cross_entropy_bits,
    entropy_bits,
    kl_uniform_bits,
    normalized_entropy,
    prediction_metrics,
    rank_profile,
    top1_correct,
)

V = 37


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, V, generator=gen) * 3
    labels = torch.randint(0, V, (40,), generator=gen)
    labels[:5] = logits[:5].argmax(dim=1)  # some correct top-1 predictions
    return logits, labels


def _probs(logits: torch.Tensor) -> np.ndarray:
    return scipy.special.softmax(logits.double().numpy(), axis=1)


def test_uniform_logits_give_max_entropy_and_zero_kl():
    logits = torch.full((3, V), 1.7)
    np.testing.assert_allclose(entropy_bits(logits), math.log2(V), rtol=1e-12)
    np.testing.assert_allclose(normalized_entropy(logits), 1.0, rtol=1e-12)
    np.testing.assert_allclose(kl_uniform_bits(logits), 0.0, atol=1e-12)
    np.testing.assert_allclose(rank_profile(logits), 1.0 / V, rtol=1e-12)


def test_entropy_kl_ce_accuracy_match_scipy(batch):
    logits, labels = batch
    p = _probs(logits)
    uniform = np.full(V, 1.0 / V)
    np.testing.assert_allclose(entropy_bits(logits), scipy.stats.entropy(p, base=2, axis=1),
                               rtol=1e-10)
    expected_kl = [scipy.stats.entropy(uniform, row, base=2) for row in p]
    np.testing.assert_allclose(kl_uniform_bits(logits), expected_kl, rtol=1e-10)
    expected_ce = -np.log2(p[np.arange(len(p)), labels.numpy()])
    np.testing.assert_allclose(cross_entropy_bits(logits, labels), expected_ce, rtol=1e-10)
    np.testing.assert_array_equal(top1_correct(logits, labels).numpy(),
                                  p.argmax(axis=1) == labels.numpy())


def test_rank_profile_matches_slow_sort(batch):
    logits, _ = batch
    p = _probs(logits)
    slow = np.mean([sorted(row, reverse=True)[:10] for row in p], axis=0)
    np.testing.assert_allclose(rank_profile(logits, ranks=10), slow, rtol=1e-10)
    assert rank_profile(logits, ranks=500).shape == (V,)  # R = min(ranks, V)


def test_metrics_are_invariant_to_shifting_logits(batch):
    logits, labels = batch
    shifted = logits + torch.randn(logits.shape[0], 1) * 50
    a, b = prediction_metrics(logits, labels), prediction_metrics(shifted, labels)
    for key in ("entropy_bits", "kl_uniform_bits", "cross_entropy_bits", "accuracy"):
        assert a[key] == pytest.approx(b[key], rel=1e-5)


def test_one_shot_summary_is_the_mean_of_per_position_values(batch):
    logits, labels = batch
    out = prediction_metrics(logits, labels, ranks=5)
    ce = cross_entropy_bits(logits, labels).mean().item()
    assert out["positions"] == 40
    assert out["entropy_bits"] == pytest.approx(entropy_bits(logits).mean().item(), rel=1e-12)
    assert out["entropy_normalized"] == pytest.approx(out["entropy_bits"] / math.log2(V))
    assert out["kl_uniform_bits"] == pytest.approx(kl_uniform_bits(logits).mean().item())
    assert out["cross_entropy_bits"] == pytest.approx(ce, rel=1e-12)
    assert out["perplexity"] == pytest.approx(2**ce, rel=1e-12)
    assert out["accuracy"] == pytest.approx(top1_correct(logits, labels).double().mean().item())
    assert out["ranks"] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(out["rank_profile"], rank_profile(logits, 5), rtol=1e-12)


def test_streaming_over_chunks_and_merging_halves_equal_one_shot(batch):
    logits, labels = batch
    whole = prediction_metrics(logits, labels, ranks=8)
    stream = PredictionAccumulator(V, ranks=8)
    for start in range(0, 40, 7):
        stream.update(logits[start : start + 7], labels[start : start + 7])
    first, second = PredictionAccumulator(V, ranks=8), PredictionAccumulator(V, ranks=8)
    first.update(logits[:13], labels[:13])
    second.update(logits[13:], labels[13:])
    merged = first.merge(second).compute()
    for result in (stream.compute(), merged):
        assert result["positions"] == whole["positions"]
        for key, value in whole.items():
            assert result[key] == pytest.approx(value, rel=1e-12), key


def test_sums_round_trip_like_an_all_reduce_and_state_dict_through_json(batch):
    logits, labels = batch
    a, b = PredictionAccumulator(V), PredictionAccumulator(V)
    a.update(logits[:20], labels[:20])
    b.update(logits[20:], labels[20:])
    reduced = PredictionAccumulator(V)
    reduced.load_sums(a.sums() + b.sums())  # what all_reduce(SUM) produces
    expected = prediction_metrics(logits, labels)
    for key, value in reduced.compute().items():
        assert value == pytest.approx(expected[key], rel=1e-12), key
    restored = PredictionAccumulator(V)
    restored.load_state_dict(json.loads(json.dumps(reduced.state_dict())))
    assert torch.equal(restored.sums(), reduced.sums())
    with pytest.raises(ValueError):
        PredictionAccumulator(V + 1).load_state_dict(reduced.state_dict())
    with pytest.raises(ValueError):
        a.merge(PredictionAccumulator(V, ranks=3))


def test_memory_does_not_grow_with_positions(batch):
    logits, labels = batch
    acc = PredictionAccumulator(V)
    size = acc.sums().numel()
    for _ in range(3):
        acc.update(logits, labels)
    assert acc.sums().numel() == size
    assert acc.compute()["positions"] == 120


def test_bad_inputs_raise_clear_errors(batch):
    logits, labels = batch
    broken = logits.clone()
    broken[3, 4] = math.nan
    with pytest.raises(NonFiniteLogitsError, match="1 of 40"):
        entropy_bits(broken)
    broken[3, 4] = math.inf
    with pytest.raises(ValueError):  # NonFiniteLogitsError is a ValueError
        PredictionAccumulator(V).update(broken, labels)
    with pytest.raises(ValueError, match="labels"):
        cross_entropy_bits(logits, torch.full((40,), V))
    with pytest.raises(ValueError, match="vocab_size"):
        PredictionAccumulator(V + 3).update(logits, labels)
    with pytest.raises(EmptyAccumulatorError):
        PredictionAccumulator(V).compute()


def test_low_precision_logits_are_computed_in_float64():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, V, generator=gen)
    half = logits.to(torch.bfloat16)
    expected = scipy.stats.entropy(_probs(half.float()), base=2, axis=1)
    np.testing.assert_allclose(entropy_bits(half), expected, rtol=1e-10)
    assert entropy_bits(half).dtype == torch.float64


def test_internal_row_chunks_do_not_change_the_sums(batch, monkeypatch):
    import fmaudit.metrics.prediction as prediction

    logits, labels = batch
    whole = PredictionAccumulator(V, ranks=8)
    whole.update(logits, labels)
    monkeypatch.setattr(prediction, "_CHUNK_ELEMENTS", 3 * V)  # 3 positions per chunk
    chunked = PredictionAccumulator(V, ranks=8)
    chunked.update(logits, labels)
    torch.testing.assert_close(chunked.sums(), whole.sums(), rtol=1e-12, atol=1e-12)
    expected = -np.sum(_probs(logits) * np.log2(_probs(logits)))
    assert chunked.compute()["entropy_bits"] * 40 == pytest.approx(expected, rel=1e-12)


def test_nonfinite_count_in_sums_raises_at_compute(batch):
    """On an accelerator update() only counts NaN/inf positions (no host sync); the count
    travels with the sums (all-reduce) and compute() raises."""
    import fmaudit.metrics.prediction as prediction

    logits, labels = batch
    acc = PredictionAccumulator(V)
    acc.update(logits, labels)
    sums = acc.sums()
    sums[prediction._NONFINITE] = 3
    acc.load_sums(sums)
    with pytest.raises(NonFiniteLogitsError, match="3 of 40"):
        acc.compute()


def test_minus_inf_logit_is_caught_on_cpu(batch):
    logits, labels = batch
    broken = logits.clone()
    broken[7, 0] = -math.inf  # exp gives 0 there: only the log-prob row sum sees it
    with pytest.raises(NonFiniteLogitsError, match="1 of 40"):
        PredictionAccumulator(V).update(broken, labels)
