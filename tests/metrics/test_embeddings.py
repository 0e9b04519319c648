"""Embedding metrics against brute-force loops, scipy and direct HSIC formulas, plus
invariances (rotation, scaling, permutation)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.spatial
import scipy.stats
import torch
from scipy.spatial.distance import pdist, squareform

import fmaudit.metrics.embeddings as emb
from fmaudit.metrics import (
    STATIC_METRICS,
    EmbeddingGeometry,
    anisotropy,
    compare_embeddings,
    compare_members,
    effective_rank,
    knn_indices,
    knn_jaccard,
    linear_cka,
    local_spearman,
    procrustes,
    rbf_cka,
    row_permuted,
    summarize_static,
    topk_overlap,
    topk_overlap_chance,
    usable_rows,
    valid_ks,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(randn(d, d, seed=seed))
    return q


@pytest.fixture
def pair():
    """Two related matrices: B is a noisy copy of A."""
    a = randn(30, 6, seed=1)
    return a, a + 0.7 * randn(30, 6, seed=2)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # a zero row gives NaN here (tests map it to 0)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit @ unit.T


def slow_knn(x: np.ndarray, i: int, k: int) -> list[int]:
    sims = cosine_matrix(x)[i]
    others = [j for j in range(len(x)) if j != i]
    return sorted(others, key=lambda j: -sims[j])[:k]


# -- neighbourhoods ---------------------------------------------------------------------------
def test_knn_indices_match_brute_force_and_exclude_self_explicitly(monkeypatch):
    x = randn(30, 6, seed=3)
    x[7] = x[3]  # a duplicate: its nearest neighbour is the copy, not itself
    monkeypatch.setattr(emb, "_BLOCK_ELEMENTS", 30 * 4)  # force several row blocks
    idx = knn_indices(x, 5)
    sims = cosine_matrix(x.numpy())
    for i in range(30):
        assert set(idx[i].tolist()) == set(slow_knn(x.numpy(), i, 5))  # rows 3, 7 tie elsewhere
        assert np.all(np.diff(sims[i, idx[i].numpy()]) <= 1e-7)  # descending similarity
        assert i not in idx[i].tolist()
    assert idx[3, 0] == 7 and idx[7, 0] == 3


def test_topk_overlap_matches_python_loop(pair):
    a, b = pair
    for k in (1, 3, 10):
        expected = np.mean([
            len(set(slow_knn(a.numpy(), i, k)) & set(slow_knn(b.numpy(), i, k)))
            / len(set(slow_knn(a.numpy(), i, k)) | set(slow_knn(b.numpy(), i, k)))
            for i in range(30)
        ])
        assert topk_overlap(a, b, k) == pytest.approx(expected, rel=1e-12)


def test_knn_jaccard_prefixes_equal_separate_calls(pair):
    a, b = pair
    many = knn_jaccard(knn_indices(a, 12), knn_indices(b, 12), [1, 5, 12])
    for k in (1, 5, 12):
        assert many[k] == pytest.approx(topk_overlap(a, b, k), rel=1e-12)


def test_overlap_is_one_for_identical_rotated_or_scaled_matrices(pair):
    a, _ = pair
    assert topk_overlap(a, a.clone(), 5) == 1.0
    assert topk_overlap(a, 3.0 * a @ orthogonal(6, seed=4), 5) == 1.0


def test_row_permutation_brings_overlap_to_chance():
    a = randn(400, 16, seed=5)
    shuffled = row_permuted(a, torch.Generator().manual_seed(0))
    chance = topk_overlap_chance(400, 10)
    assert topk_overlap(a, shuffled, 10) == pytest.approx(chance, abs=0.01)
    assert topk_overlap(a, a, 10) == 1.0


def test_chance_formula_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n, k, trials = 40, 6, 20000
    others = n - 1
    draws_a = np.argsort(rng.random((trials, others)), axis=1)[:, :k]
    draws_b = np.argsort(rng.random((trials, others)), axis=1)[:, :k]
    inter = np.array([len(np.intersect1d(x, y)) for x, y in zip(draws_a, draws_b, strict=True)])
    jaccard = inter / (2 * k - inter)
    se = jaccard.std() / math.sqrt(trials)
    assert topk_overlap_chance(n, k) == pytest.approx(jaccard.mean(), abs=4 * se)
    assert topk_overlap_chance(n, n - 1) == pytest.approx(1.0)
    big = topk_overlap_chance(4096, 1000)  # stable at the study's size
    mean_x = 1000**2 / 4095
    assert big == pytest.approx(mean_x / (2000 - mean_x), rel=0.01)


def test_local_spearman_matches_scipy_loop(pair):
    a, b = pair
    sa, sb = cosine_matrix(a.numpy()), cosine_matrix(b.numpy())
    for k in (2, 5, 12):
        rows = []
        for i in range(30):
            na, nb = slow_knn(a.numpy(), i, k), slow_knn(b.numpy(), i, k)
            rho_a = scipy.stats.spearmanr(sa[i, na], sb[i, na]).statistic
            rho_b = scipy.stats.spearmanr(sa[i, nb], sb[i, nb]).statistic
            rows.append((rho_a + rho_b) / 2)
        assert local_spearman(a, b, k) == pytest.approx(np.nanmean(rows), rel=1e-9, abs=1e-12)
    assert local_spearman(a, a, 5) == pytest.approx(1.0)


def test_local_spearman_excludes_rows_without_variance(pair):
    a, b = pair
    b = b.clone()
    b[0] = 0.0  # row 0 has cosine 0 to everything in B: no rank order, excluded
    sa, sb = cosine_matrix(a.numpy()), np.nan_to_num(cosine_matrix(b.numpy()))
    k = 5
    rows = []
    for i in range(1, 30):
        na = slow_knn(a.numpy(), i, k)
        nb = sorted((j for j in range(30) if j != i), key=lambda j: -sb[i, j])[:k]
        rho_a = scipy.stats.spearmanr(sa[i, na], sb[i, na]).statistic
        rho_b = scipy.stats.spearmanr(sa[i, nb], sb[i, nb]).statistic
        rows.append((rho_a + rho_b) / 2)
    assert local_spearman(a, b, k) == pytest.approx(np.mean(rows), rel=1e-9)
    assert math.isnan(local_spearman(a, torch.ones(30, 6), 5))  # every row excluded


def test_average_ranks_match_scipy_rankdata_with_ties():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.5, 0.1, 0.2, 0.3, 0.4, 0.6]])
    expected = scipy.stats.rankdata(x.numpy(), axis=1) - 1
    np.testing.assert_array_equal(emb._average_ranks(x).numpy(), expected)
    desc = x.sort(dim=1, descending=True).values  # the sorted-input path, both directions
    np.testing.assert_array_equal(emb._average_ranks_sorted(desc, descending=True).numpy(),
                                  scipy.stats.rankdata(desc.numpy(), axis=1) - 1)
    asc = x.sort(dim=1).values
    np.testing.assert_array_equal(emb._average_ranks_sorted(asc).numpy(),
                                  scipy.stats.rankdata(asc.numpy(), axis=1) - 1)


def test_ks_validity(pair):
    assert valid_ks([1, 3, 29, 30, 1000], 30) == [1, 3, 29]
    with pytest.raises(ValueError):
        topk_overlap(*pair, 30)
    with pytest.raises(ValueError):
        local_spearman(*pair, 1)


def test_usable_rows_drop_specials_and_rows_zero_in_any_member():
    a, b = randn(8, 3, seed=6), randn(8, 3, seed=7)
    a[2] = 0.0
    b[5] = 0.0
    assert usable_rows([a, b], special_ids=[0, 1]).tolist() == [3, 4, 6, 7]
    assert usable_rows(a).tolist() == [0, 1, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError):
        usable_rows([a, b[:4]])


# -- global shape ----------------------------------------------------------------------------
def test_procrustes_matches_scipy(pair):
    a, b = pair
    mtx1, mtx2, disparity = scipy.spatial.procrustes(a.numpy(), b.numpy())
    cos = np.mean(np.sum(mtx1 * mtx2, axis=1)
                  / (np.linalg.norm(mtx1, axis=1) * np.linalg.norm(mtx2, axis=1)))
    ours = procrustes(a, b)
    assert ours[0] == pytest.approx(disparity, rel=1e-10)
    assert ours[1] == pytest.approx(cos, rel=1e-6)  # float32 product for the cosine


def test_rotation_scaling_translation_leave_shape_metrics_at_their_maximum(pair):
    a, _ = pair
    moved = 2.5 * a @ orthogonal(6, seed=8) + 4.0
    disparity, cosine = procrustes(a, moved)
    assert disparity == pytest.approx(0.0, abs=1e-12)
    assert cosine == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(a, moved) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(a, moved) == pytest.approx(1.0, abs=1e-5)  # bandwidth scales with the data
    assert linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)


def hsic_cka(k: np.ndarray, ell: np.ndarray) -> float:
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with H = I - 11^T / n."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(x, y):
        return np.trace(x @ h @ y @ h)

    return hsic(k, ell) / math.sqrt(hsic(k, k) * hsic(ell, ell))


def test_linear_cka_matches_direct_hsic(pair):
    a, b = pair
    x, y = a.numpy(), b[:, :4].numpy()  # different widths are allowed
    assert linear_cka(a, b[:, :4]) == pytest.approx(hsic_cka(x @ x.T, y @ y.T), rel=1e-10)


def test_rbf_cka_matches_direct_hsic_with_median_bandwidth(pair):
    a, b = pair

    def rbf(x, rule=0.5):
        d = pdist(x)
        sigma = rule * np.median(d)
        return np.exp(-squareform(d) ** 2 / (2 * sigma**2))

    expected = hsic_cka(rbf(a.numpy()), rbf(b.numpy()))
    assert rbf_cka(a, b) == pytest.approx(expected, rel=1e-5)
    expected_wide = hsic_cka(rbf(a.numpy(), 2.0), rbf(b.numpy(), 2.0))
    assert rbf_cka(a, b, sigma_rule=2.0) == pytest.approx(expected_wide, rel=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e3, 1e4])
def test_rbf_cka_is_translation_invariant_at_any_offset(offset):
    """The RBF kernel depends on distances only. Rows sharing an offset far larger than their
    spread (anisotropic embeddings) made |x|^2 + |y|^2 - 2 x.y cancel in float32: at 1e4 the
    value was 0.135 instead of 0.843. Reference: scipy distances in float64."""
    a, b = randn(200, 16, seed=21), randn(200, 16, seed=22)
    b = 0.5 * a + b  # related, so the value is not near 0
    shift = torch.full((16,), offset) * torch.linspace(-1, 1, 16)

    def rbf(x, rule=0.5):
        d = pdist(x)
        return np.exp(-squareform(d) ** 2 / (2 * (rule * np.median(d)) ** 2))

    expected = hsic_cka(rbf(a.double().numpy()), rbf(b.double().numpy()))
    moved_a, moved_b = a + shift, b + shift
    assert rbf_cka(moved_a, moved_b) == pytest.approx(expected, rel=2e-6)
    # the many-member path takes the same Gram as the one-shot function
    geos = [EmbeddingGeometry(moved_a), EmbeddingGeometry(moved_b)]
    assert compare_embeddings(*geos, [1], ["rbf_cka"])["rbf_cka"] == pytest.approx(
        rbf_cka(moved_a, moved_b), rel=1e-12)


@pytest.mark.parametrize("n", [5, 6, 9])  # even and odd numbers of pairs
def test_median_pair_distance_matches_numpy(n):
    x = torch.round(randn(n, 2, seed=n) * 2)  # integer coordinates: tied distances
    d2 = torch.cdist(x, x) ** 2
    assert emb._median_pair_distance(d2) == pytest.approx(np.median(pdist(x.numpy())),
                                                           rel=1e-12)


def test_unrelated_matrices_have_low_cka():
    a, b = randn(200, 8, seed=9), randn(200, 8, seed=10)
    assert linear_cka(a, b) < 0.15
    assert linear_cka(a, row_permuted(a, torch.Generator().manual_seed(1))) < 0.15


# -- single-matrix summaries -----------------------------------------------------------------
def test_anisotropy_small_for_isotropic_large_for_shifted():
    x = randn(2000, 16, seed=11)
    assert anisotropy(x) < 0.05
    assert anisotropy(x + 10.0) > 0.95
    direction = torch.zeros(16, dtype=torch.float64)
    direction[0] = 1.0
    assert anisotropy(direction.repeat(5, 1)) == pytest.approx(1.0)
    # the value itself: the norm of the mean unit vector (numpy), ~1/sqrt(n) for isotropic rows
    y = x.numpy()
    unit_mean = (y / np.linalg.norm(y, axis=1, keepdims=True)).mean(axis=0)
    assert anisotropy(x) == pytest.approx(np.linalg.norm(unit_mean), rel=1e-12)
    assert 0.3 / math.sqrt(2000) < anisotropy(x) < 3 / math.sqrt(2000)


def test_effective_rank_of_identity_like_matrix_and_against_numpy():
    m = torch.zeros(10, 8, dtype=torch.float64)
    m[:5, :5] = 3.0 * torch.eye(5, dtype=torch.float64)
    assert effective_rank(m) == pytest.approx(5.0, rel=1e-12)
    x = randn(20, 6, seed=12)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-10)
    assert effective_rank(7.0 * x) == pytest.approx(effective_rank(x), rel=1e-10)
    with pytest.raises(ValueError):
        effective_rank(torch.zeros(3, 3))


# -- cached many-member path ------------------------------------------------------------------
def test_compare_embeddings_equals_one_shot_functions(pair):
    a, b = pair
    ks = [1, 3, 10, 29, 30, 1000]
    ga, gb = EmbeddingGeometry(a), EmbeddingGeometry(b)
    out = compare_embeddings(ga, gb, ks)
    assert out["rows"] == 30
    assert list(out["topk_overlap"]) == [1, 3, 10, 29]
    assert list(out["local_spearman"]) == [3, 10, 29]
    for k in (1, 3, 10, 29):
        assert out["topk_overlap"][k] == pytest.approx(topk_overlap(a, b, k), rel=1e-12)
    for k in (3, 10, 29):
        assert out["local_spearman"][k] == pytest.approx(local_spearman(a, b, k), rel=1e-9)
    disparity, cosine = procrustes(a, b)
    assert out["procrustes_disparity"] == pytest.approx(disparity, rel=1e-10)
    assert out["procrustes_cosine"] == pytest.approx(cosine, rel=1e-10)
    assert out["linear_cka"] == pytest.approx(linear_cka(a, b), rel=1e-10)
    assert out["rbf_cka"] == pytest.approx(rbf_cka(a, b), rel=1e-10)
    only = compare_embeddings(ga, gb, ks, metrics=["linear_cka"])
    assert set(only) == {"rows", "linear_cka"}
    with pytest.raises(ValueError):
        compare_embeddings(ga, gb, ks, metrics=["bogus"])
    assert set(STATIC_METRICS) >= {"procrustes", "rbf_cka"}


def test_summarize_static_shapes_and_nulls(pair):
    a, b = pair
    geoms = [EmbeddingGeometry(m) for m in (a, b, a + 0.3 * randn(30, 6, seed=13))]
    ks = [1, 5, 30]
    pairs = [compare_embeddings(geoms[i], geoms[j], ks) for i, j in ((0, 1), (0, 2), (1, 2))]
    null = [compare_embeddings(g, g.permuted(torch.Generator().manual_seed(0)), ks)
            for g in geoms]
    out = summarize_static(pairs, ks, 30, null=null)
    assert [e["k"] for e in out["topk_overlap"]] == [1, 5]
    assert [e["k"] for e in out["local_spearman"]] == [5]
    first = out["topk_overlap"][0]
    assert first["mean"] == pytest.approx(np.mean([p["topk_overlap"][1] for p in pairs]))
    assert first["std"] == pytest.approx(np.std([p["topk_overlap"][1] for p in pairs], ddof=1))
    assert first["chance"] == pytest.approx(topk_overlap_chance(30, 1))
    assert first["init"] is None and first["null"] < first["mean"]
    assert first["null"] == pytest.approx(np.mean([r["topk_overlap"][1] for r in null]))
    # init: the mean over the init pairs' results, apart from the null's
    init = [compare_embeddings(geoms[i], geoms[j], ks) for i, j in ((1, 0), (2, 1))]
    with_init = summarize_static(pairs, ks, 30, null=null, init=init)
    for key in ("linear_cka", "procrustes_disparity"):
        assert with_init[key]["init"] == pytest.approx(np.mean([r[key] for r in init]))
        assert with_init[key]["null"] == pytest.approx(np.mean([r[key] for r in null]))
        assert with_init[key]["init"] != with_init[key]["null"]
    assert out["rbf_cka"]["bandwidth"] == "0.5 x median pairwise distance"
    single = summarize_static([], ks, 30)
    assert single["linear_cka"] == {"mean": None, "std": None, "null": None, "init": None}
    assert single["topk_overlap"][0]["mean"] is None


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 2), (4, 2), (8, 4), (16, 8), (64, 8)])
def test_default_workers_are_half_the_cores_from_2_to_8(cpus, workers, monkeypatch):
    geos = [emb.EmbeddingGeometry(torch.randn(6, 3)) for _ in range(2)]
    assert emb._default_workers(geos, cpus) == workers
    # the cores the process may use (taskset, SLURM), not the machine's
    monkeypatch.setattr(emb.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(emb.os, "cpu_count", lambda: 128)
    assert emb._default_workers(geos) == workers


@pytest.mark.parametrize("workers", [1, 3])
def test_compare_members_equals_one_comparison_at_a_time(workers):
    mats = [randn(40, 5, seed=20 + m) for m in range(4)]
    mats[2] = mats[0] + 0.2 * randn(40, 5, seed=30)  # one close pair among unrelated ones
    ks = [1, 4, 10]
    pairs, null = compare_members([EmbeddingGeometry(m) for m in mats], ks,
                                  null_generator=torch.Generator().manual_seed(5),
                                  workers=workers)
    # the reference: fresh geometries, one comparison after another, permutations drawn in
    # member order from a generator in the same state
    gen = torch.Generator().manual_seed(5)
    fresh = [EmbeddingGeometry(m) for m in mats]
    order = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert pairs == [compare_embeddings(fresh[i], fresh[j], ks) for i, j in order]
    expected_null = [
        compare_embeddings(EmbeddingGeometry(mats[i]),
                           EmbeddingGeometry(row_permuted(mats[(i + 1) % 4], gen)), ks)
        for i in range(4)]
    assert [r["topk_overlap"] for r in null] == [r["topk_overlap"] for r in expected_null]
    for got, want in zip(null, expected_null, strict=True):
        for key in ("procrustes_disparity", "linear_cka", "rbf_cka"):
            assert got[key] == pytest.approx(want[key], rel=1e-10)
    # the close pair stands out from its nulls
    assert pairs[1]["linear_cka"] > 0.8 > max(r["linear_cka"] for r in null)


def test_compare_members_under_inference_mode_on_threads():
    with torch.inference_mode():  # the audit's mode; worker threads must carry it
        mats = [randn(30, 4, seed=s) for s in (1, 2, 3)]
        pairs, null = compare_members([EmbeddingGeometry(m) for m in mats], [1, 5],
                                      null_generator=torch.Generator().manual_seed(0), workers=2)
    ref, _ = compare_members([EmbeddingGeometry(randn(30, 4, seed=s)) for s in (1, 2, 3)],
                             [1, 5], workers=1)
    assert pairs == ref and len(null) == 3


def test_compare_members_without_pairs_or_null():
    one = [EmbeddingGeometry(randn(12, 3, seed=1))]
    assert compare_members(one, [1, 3], null_generator=torch.Generator()) == ([], [])
    two = [EmbeddingGeometry(randn(12, 3, seed=s)) for s in (1, 2)]
    pairs, null = compare_members(two, [1, 3])
    assert len(pairs) == 1 and null == []


def test_bad_matrices_raise(pair):
    a, b = pair
    with pytest.raises(ValueError):
        procrustes(a, b[:, :3])
    with pytest.raises(ValueError):
        linear_cka(a, b[:10])
    with pytest.raises(ValueError):
        linear_cka(torch.ones(5, 3), randn(5, 3))  # no shape left after centring
    bad = a.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError):
        knn_indices(bad, 3)


def test_permuted_geometry_reuses_cache_and_equals_recomputing(pair):
    a, b = pair
    ks = [1, 5, 12]
    ga, gb = EmbeddingGeometry(a), EmbeddingGeometry(b)
    compare_embeddings(ga, gb, ks)  # fill every cache of gb
    cached = gb.permuted(torch.Generator().manual_seed(3))
    fresh = EmbeddingGeometry(row_permuted(b, torch.Generator().manual_seed(3)))
    assert torch.equal(cached.matrix, fresh.matrix)
    lazy = EmbeddingGeometry(b).permuted(torch.Generator().manual_seed(3))  # nothing cached
    expected = compare_embeddings(ga, fresh, ks)
    for other in (cached, lazy):
        got = compare_embeddings(ga, other, ks)
        for key, value in expected.items():
            if isinstance(value, dict):
                for k in value:
                    assert got[key][k] == pytest.approx(value[k], rel=1e-6, abs=1e-9), key
            else:
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


# -- fast paths against their plain definitions -----------------------------------------------
def test_ascending_keys_sort_like_a_stable_argsort_with_signed_zeros():
    v = np.array([[0.5, -0.0, 0.0, -1.5, np.inf, -np.inf, 1e-30, -1e-30, 0.5, -3.0]],
                 dtype=np.float32)
    keys = emb._ascending_keys(v)
    keys.sort(axis=1)
    np.testing.assert_array_equal(emb._key_columns(keys)[0], np.argsort(v[0], kind="stable"))
    high = keys >> np.uint64(32)
    assert high[0, 4] == high[0, 5]  # -0.0 and 0.0 are one value (as for scipy's ranks)
    # the uint32 word views equal the shifts and masks they replace, also on column slices
    np.testing.assert_array_equal(emb._key_words(keys, high=True), high)
    np.testing.assert_array_equal(emb._key_words(keys[:, :4]), keys[:, :4] & np.uint64(0xFFFFFFFF))


def test_side_spearman_does_not_depend_on_the_order_of_ks():
    # the last k sorts its keys in place: an earlier, smaller k must not see them sorted
    gen = torch.Generator().manual_seed(16)
    own = torch.randn(20, 12, generator=gen).sort(dim=1, descending=True).values
    other = own + torch.randn(20, 12, generator=gen)
    forward = emb._side_spearman(own, other, [3, 7, 12]).numpy()
    backward = emb._side_spearman(own, other.clone(), [12, 7, 3]).numpy()
    np.testing.assert_array_equal(forward, backward[:, ::-1])
    np.testing.assert_array_equal(emb._side_spearman(own, other, [12]).numpy(), forward[:, 2:])


def test_topk_rows_equal_a_stable_descending_sort():
    x = torch.round(randn(50, 40, seed=14) * 2).float()  # many ties
    x.fill_diagonal_(-math.inf)
    for k in (1, 7, 39):
        expected = np.argsort(-x.numpy(), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(emb._topk_rows(x, k).numpy(), expected)


@pytest.mark.parametrize("quantum", [0.0, 0.5])  # continuous values, or many ties
def test_side_spearman_matches_scipy_rowwise(quantum):
    gen = torch.Generator().manual_seed(15)
    own = torch.randn(60, 30, generator=gen)
    other = own + torch.randn(60, 30, generator=gen)
    if quantum:
        own, other = torch.round(own / quantum) * quantum, torch.round(other / quantum) * quantum
    own = own.sort(dim=1, descending=True).values  # a neighbour list: descending own values
    other[3] = 1.0  # no variance: NaN, as scipy
    ks = [2, 5, 30]
    got = emb._side_spearman(own, other, ks).numpy()
    for t, k in enumerate(ks):
        for i in range(60):
            with warnings.catch_warnings():  # scipy warns on the constant (NaN) rows
                warnings.simplefilter("ignore")
                expected = scipy.stats.spearmanr(own[i, :k].numpy(), other[i, :k].numpy())[0]
            if np.isnan(expected):
                assert np.isnan(got[i, t]), (i, k)
            else:
                assert got[i, t] == pytest.approx(expected, rel=1e-12, abs=1e-14), (i, k)


def test_permuted_partner_reads_through_its_permutation_exactly(pair):
    a, b = pair
    ga, gb = EmbeddingGeometry(a), EmbeddingGeometry(b)
    gen = torch.Generator().manual_seed(4)
    once = gb.permuted(gen)
    twice = once.permuted(gen)  # a permutation of a permutation reads the same source
    assert twice._source is gb
    for partner in (once, twice):
        perm = partner._perm
        assert torch.equal(partner.matrix, b[perm])
        assert torch.equal(partner.similarity, gb.similarity[perm][:, perm])
        kernel, norm, _ = gb.rbf
        expected = emb._frobenius_dot(ga.rbf[0], kernel[perm][:, perm]) / (ga.rbf[1] * norm)
        assert emb._rbf_alignment(ga, partner) == pytest.approx(expected, rel=1e-12)
        assert emb._rbf_alignment(partner, ga) == pytest.approx(expected, rel=1e-12)
        rows = slice(3, 20)
        idx = partner.knn(7)[rows]
        assert torch.equal(partner._similarities_at(rows, idx),
                           partner.similarity[rows].gather(1, idx))
        assert torch.equal(partner._neighbour_similarities(7),
                           partner.similarity.gather(1, partner.knn(7)))
    both = emb._rbf_alignment(once, twice)
    k1, k2 = once.rbf[0], twice.rbf[0]
    assert both == pytest.approx(emb._frobenius_dot(k1, k2) / (once.rbf[1] * twice.rbf[1]),
                                 rel=1e-12)
