"""Fisher shares and coarse splits."""

from __future__ import annotations

import math

import pytest

from fmaudit.metrics import coarse_split, group_shares, shares_over_members


def test_group_shares_divide_by_total():
    sums = {"embeddings": 6.0, "layer.0": 1.5, "layer.1": 0.5, "head": 2.0}
    shares = group_shares(sums)
    total = sum(sums.values())
    assert list(shares) == list(sums)
    for name, value in sums.items():
        assert shares[name] == pytest.approx(value / total)
    assert math.fsum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [{}, {"a": 0.0, "b": 0.0}, {"a": -1.0, "b": 2.0},
                                 {"a": math.nan}])
def test_group_shares_reject_undefined_input(bad):
    with pytest.raises(ValueError):
        group_shares(bad)


def test_coarse_split_sums_layers_into_body_and_keeps_other():
    shares = group_shares({"embeddings": 5.0, "layer.0": 2.0, "layer.11": 1.0, "head": 1.0,
                           "other": 1.0})
    coarse = coarse_split(shares)
    assert coarse["embeddings"] == pytest.approx(0.5)
    assert coarse["body"] == pytest.approx(0.3)
    assert coarse["head"] == pytest.approx(0.1)
    assert coarse["other"] == pytest.approx(0.1)
    assert math.fsum(coarse.values()) == pytest.approx(1.0)
    # "other" is absent when zero, never an empty key
    assert "other" not in coarse_split({"embeddings": 0.7, "layer.0": 0.3, "other": 0.0})
    # unknown group names are not dropped either
    assert coarse_split({"embeddings": 0.5, "pooler": 0.5})["other"] == pytest.approx(0.5)


def test_shares_over_members():
    members = [{"embeddings": 0.6, "head": 0.4}, {"embeddings": 0.8, "head": 0.2}]
    out = shares_over_members(members)
    assert out["embeddings"]["mean"] == pytest.approx(0.7)
    assert out["embeddings"]["std"] == pytest.approx(math.sqrt(0.02))
    assert out["head"]["members"] == [0.4, 0.2]
