"""Aggregates over members/pairs against numpy (ddof=1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmaudit.metrics import (
    finite_or_none,
    mean_std_members,
    mean_std_pairs,
    mean_std_vectors,
    pair_indices,
)


def test_mean_std_members_matches_numpy_sample_std():
    values = list(np.random.default_rng(0).normal(size=7))
    out = mean_std_members(values)
    assert out["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert out["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert out["members"] == pytest.approx(values)


def test_single_member_has_null_std_and_no_member_has_null_mean():
    assert mean_std_members([2.5]) == {"mean": 2.5, "std": None, "members": [2.5]}
    assert mean_std_pairs([]) == {"mean": None, "std": None}


def test_non_finite_or_missing_values_make_the_statistic_null_never_nan():
    out = mean_std_members([1.0, math.nan, 3.0])
    assert out["mean"] is None and out["std"] is None
    assert out["members"] == [1.0, None, 3.0]
    assert mean_std_pairs([1.0, None])["mean"] is None
    assert finite_or_none(math.inf) is None and finite_or_none(2) == 2.0


def test_mean_std_vectors_is_elementwise():
    rng = np.random.default_rng(1)
    vecs = rng.random((4, 5))
    out = mean_std_vectors(vecs.tolist())
    np.testing.assert_allclose(out["mean"], vecs.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(out["std"], vecs.std(axis=0, ddof=1), rtol=1e-12)
    assert mean_std_vectors([[1.0, 2.0]])["std"] is None
    with pytest.raises(ValueError):
        mean_std_vectors([[1.0], [1.0, 2.0]])


def test_pair_indices():
    assert pair_indices(1) == []
    pairs = pair_indices(5)
    assert len(pairs) == 10 and all(i < j for i, j in pairs) and len(set(pairs)) == 10
