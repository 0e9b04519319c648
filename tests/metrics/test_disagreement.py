"""Top-p truncation, Jensen-Shannon distance and the disagreement accumulator against slow
Python/scipy references."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import warnings

import numpy as np
import pytest
import scipy.special
from scipy.spatial.distance import jensenshannon

import fmaudit.metrics.disagreement as disagreement
import fmaudit.metrics.prediction as prediction
from fmaudit.metrics import (
    DisagreementAccumulator,
    EmptyAccumulatorError,
    NonFiniteLogitsError,
    argmax_agreement,
    js_distance,
    truncate_top_p,
)

torch = pytest.importorskip("torch")


def slow_truncate(row: list[float], p: float, rule: str) -> list[float]:
    """One row, token by token (Python's sort is stable: ties keep the lower id first)."""
    total = math.fsum(row)
    order = sorted(range(len(row)), key=lambda v: -row[v])
    keep, mass = set(), 0.0
    for rank, v in enumerate(order):
        if p >= 1:
            keep.add(v)
            continue
        if rule == "nucleus":
            if mass / total >= p:
                break
            keep.add(v)
            mass += row[v]
        else:
            mass += row[v]
            if mass / total > p and rank > 0:
                break
            keep.add(v)
    kept = [row[v] if v in keep else 0.0 for v in range(len(row))]
    z = math.fsum(kept)
    return [x / z for x in kept]


def random_probs(n: int, v: int, seed: int, zeros: bool = True) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(v, 0.5), size=n)
    if zeros:
        p[rng.random(p.shape) < 0.2] = 0.0
        p[:, 0] += 1e-3  # no all-zero row
    return torch.from_numpy(p / p.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("rule", ["nucleus", "paper"])
def test_truncation_matches_slow_loop(rule):
    probs = random_probs(30, 15, seed=1)
    probs[0] = torch.full((15,), 1 / 15, dtype=torch.float64)  # all tied
    probs[1, :4] = 0.25  # ties at the boundary
    probs[1, 4:] = 0.0
    for p in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0):
        fast = truncate_top_p(probs, p, rule)
        slow = [slow_truncate(row, p, rule) for row in probs.tolist()]
        np.testing.assert_allclose(fast.numpy(), np.array(slow), rtol=1e-12, atol=0, err_msg=str(p))


def test_rules_differ_as_documented():
    row = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    # nucleus keeps the smallest prefix reaching p; paper keeps tokens with cum <= p.
    assert (truncate_top_p(row, 0.6, "nucleus") > 0).sum() == 2
    assert (truncate_top_p(row, 0.6, "paper") > 0).sum() == 1
    assert (truncate_top_p(row, 0.01, "paper") > 0).sum() == 1  # at least the top token


@pytest.mark.parametrize("scale", [1 + 3e-6, 1 - 3e-6])
@pytest.mark.parametrize("rule", ["nucleus", "paper"])
def test_p_one_keeps_every_token_of_float32_rows_not_summing_to_one(scale, rule):
    gen = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(8, 500, generator=gen) * 4, dim=1) * scale  # float32
    out = truncate_top_p(probs, 1.0, rule)
    assert bool((out > 0).all())
    expected = probs.double() / probs.double().sum(dim=1, keepdim=True)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-12)


def test_identical_rows_truncate_identically_even_with_ties():
    row = torch.tensor([0.2, 0.1, 0.2, 0.1, 0.2, 0.2], dtype=torch.float64)
    probs = row.repeat(4, 1)
    for p in (0.3, 0.5, 0.7):
        out = truncate_top_p(probs, p)
        assert all(torch.equal(out[0], out[i]) for i in range(4))


def test_truncation_rejects_bad_arguments():
    probs = random_probs(2, 5, seed=0)
    for p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            truncate_top_p(probs, p)
    with pytest.raises(ValueError):
        truncate_top_p(probs, 0.5, rule="top-k")
    with pytest.raises(ValueError):
        truncate_top_p(-probs, 0.5)


def test_js_distance_matches_scipy():
    p, q = random_probs(60, 30, seed=3), random_probs(60, 30, seed=4)
    ours = js_distance(p, q).numpy()
    np.testing.assert_allclose(ours, jensenshannon(p.numpy(), q.numpy(), base=2, axis=1),
                               rtol=1e-9)
    assert np.all((ours >= 0) & (ours <= 1))
    np.testing.assert_allclose(ours, js_distance(q, p).numpy(), rtol=1e-12)  # symmetric


def test_js_distance_identical_zero_near_identical_small_disjoint_one():
    p = random_probs(20, 40, seed=5)
    assert torch.equal(js_distance(p, p), torch.zeros(20, dtype=torch.float64))
    noise = torch.from_numpy(np.random.default_rng(6).normal(size=p.shape))
    for eps in (1e-12, 1e-9):  # below float64 resolution: scipy returns NaN here
        q = p * (1 + eps * noise)
        near = js_distance(p, q / q.sum(dim=1, keepdim=True))
        assert bool(torch.isfinite(near).all()) and float(near.max()) < 1e-6
    # A resolvable small difference matches the second-order expansion
    # JSD ~ sum (p - q)^2 / (8 m ln 2), m = (p + q) / 2.
    q = p * (1 + 3e-6 * noise)
    q = q / q.sum(dim=1, keepdim=True)
    m = (p + q) / 2
    ratio = torch.where(m > 0, (p - q) ** 2 / m, torch.zeros_like(m))
    expected = (ratio.sum(dim=1) / (8 * math.log(2))).sqrt()
    np.testing.assert_allclose(js_distance(p, q).numpy(), expected.numpy(), rtol=1e-3)
    a = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.3, 0.7]])
    assert float(js_distance(a, b)[0]) == pytest.approx(1.0, abs=1e-12)


def test_argmax_agreement():
    a = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 5.0, 1.0], [0.0, 1.0, 0.0]])
    assert argmax_agreement(a, b).tolist() == [True, False]


def brute_force_disagreement(members, top_ps, rule):
    """Per pair, per position: scipy JS of slowly truncated softmax rows."""
    probs = [scipy.special.softmax(m.double().numpy(), axis=1) for m in members]
    pairs = list(itertools.combinations(range(len(members)), 2))
    js = np.zeros((len(pairs), len(top_ps)))
    agree = np.zeros(len(pairs))
    for k, (i, j) in enumerate(pairs):
        agree[k] = np.mean(probs[i].argmax(axis=1) == probs[j].argmax(axis=1))
        for c, p in enumerate(top_ps):
            ti = np.array([slow_truncate(list(r), p, rule) for r in probs[i]])
            tj = np.array([slow_truncate(list(r), p, rule) for r in probs[j]])
            js[k, c] = np.mean(jensenshannon(ti, tj, base=2, axis=1))
    return js, agree


@pytest.mark.parametrize("rule", ["nucleus", "paper"])
def test_accumulator_matches_brute_force(rule):
    gen = torch.Generator().manual_seed(7)
    shared = torch.randn(25, 12, generator=gen) * 2
    members = [shared + torch.randn(25, 12, generator=gen) for _ in range(3)]
    top_ps = [0.3, 0.7, 1.0]
    acc = DisagreementAccumulator(3, top_ps, rule)
    acc.update(members)
    out = acc.compute()
    js, agree = brute_force_disagreement(members, top_ps, rule)
    assert out["pairs"] == 3 and out["positions"] == 25 and out["top_p_rule"] == rule
    for c, entry in enumerate(out["js_distance"]):
        assert entry["top_p"] == top_ps[c]
        assert entry["mean"] == pytest.approx(js[:, c].mean(), rel=1e-9)
        assert entry["std"] == pytest.approx(js[:, c].std(ddof=1), rel=1e-7)
    assert out["argmax_agreement"]["mean"] == pytest.approx(agree.mean())
    assert out["argmax_agreement"]["std"] == pytest.approx(agree.std(ddof=1))
    np.testing.assert_allclose(acc.pair_means()["js_distance"], js, rtol=1e-9)


def test_identical_members_agree_fully_at_every_p():
    logits = torch.randn(30, 20, generator=torch.Generator().manual_seed(8))
    acc = DisagreementAccumulator(3, [0.1, 0.5, 0.9, 1.0])
    acc.update([logits, logits.clone(), logits.clone()])
    out = acc.compute()
    assert all(e["mean"] == 0.0 and e["std"] == 0.0 for e in out["js_distance"])
    assert out["argmax_agreement"] == {"mean": 1.0, "std": 0.0}


def test_one_member_is_not_applicable_and_two_members_have_no_std():
    logits = torch.randn(5, 9)
    single = DisagreementAccumulator(1, [0.5, 1.0])
    single.update([logits])
    out = single.compute()
    assert out["pairs"] == 0 and out["positions"] == 5
    assert all(e["mean"] is None and e["std"] is None for e in out["js_distance"])
    assert out["argmax_agreement"] == {"mean": None, "std": None}
    two = DisagreementAccumulator(2, [1.0])
    two.update([logits, logits + torch.randn(5, 9)])
    entry = two.compute()["js_distance"][0]
    assert entry["mean"] > 0 and entry["std"] is None


def test_streaming_chunks_merge_and_internal_chunking_equal_one_shot(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    members = [torch.randn(40, 16, generator=gen) for _ in range(3)]
    top_ps = [0.2, 0.6, 1.0]
    whole = DisagreementAccumulator(3, top_ps)
    whole.update(members)
    stream = DisagreementAccumulator(3, top_ps)
    for start in range(0, 40, 9):
        stream.update([m[start : start + 9] for m in members])
    first, second = DisagreementAccumulator(3, top_ps), DisagreementAccumulator(3, top_ps)
    first.update([m[:17] for m in members])
    second.update([m[17:] for m in members])
    first.merge(second)
    monkeypatch.setattr(prediction, "_CHUNK_ELEMENTS", 16 * 3)  # 3 positions per chunk
    chunked = DisagreementAccumulator(3, top_ps)
    chunked.update(members)
    size = whole.sums().numel()
    for other in (stream, first, chunked):
        assert other.sums().numel() == size  # only sums, whatever N
        torch.testing.assert_close(other.sums(), whole.sums(), rtol=1e-12, atol=1e-12)


def test_disagreement_bad_inputs():
    acc = DisagreementAccumulator(2, [0.5])
    with pytest.raises(ValueError, match="2 members"):
        acc.update([torch.randn(3, 4)])
    with pytest.raises(ValueError, match="one shape"):
        acc.update([torch.randn(3, 4), torch.randn(2, 4)])
    with pytest.raises(NonFiniteLogitsError):
        acc.update([torch.randn(3, 4), torch.full((3, 4), math.nan)])
    with pytest.raises(EmptyAccumulatorError):
        acc.compute()
    with pytest.raises(ValueError):
        acc.merge(DisagreementAccumulator(2, [0.5], "paper"))


# -- the sparse CPU path against the dense path and brute force --------------------------------
def tricky_logits(n: int, v: int, seed: int) -> torch.Tensor:
    """Rows that stress truncation: flat and peaked rows, runs of equal values (ties that
    straddle a top-p cut), and probabilities that underflow to exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=gen) * torch.rand(n, 1, generator=gen) * 4
    logits[0::4] = torch.round(logits[0::4] * 2) / 2  # quantised: many ties
    logits[1::4, : v // 3] = 2.0  # one long run of equal top values
    logits[2::7, :2] = 900.0  # everything else underflows to probability 0
    return logits


def accumulate(members, top_ps, rule, sparse, monkeypatch, ratio_form=False):
    monkeypatch.setattr(disagreement, "_SPARSE_ON_CPU", sparse)
    monkeypatch.setattr(disagreement, "_RATIO_FORM_ON_CPU", ratio_form)
    acc = DisagreementAccumulator(len(members), top_ps, rule)
    acc.update(members)
    return acc


@pytest.mark.parametrize("rule", ["nucleus", "paper"])
@pytest.mark.parametrize("top_ps", [[0.05, 0.1, 0.3, 0.5, 0.9, 1.0], [0.7, 0.05, 0.3, 0.3]])
def test_sparse_path_equals_dense_path(rule, top_ps, monkeypatch):
    members = [tricky_logits(40, 23, seed) for seed in (1, 2, 3)]
    members.append(members[0].clone())  # an identical pair: JS exactly 0
    members.append(members[1] * (1 + 1e-7))  # a nearly identical pair: the exact fallback
    sparse = accumulate(members, top_ps, rule, True, monkeypatch)
    dense = accumulate(members, top_ps, rule, False, monkeypatch)
    torch.testing.assert_close(sparse.sums(), dense.sums(), rtol=1e-10, atol=1e-12)
    # the accelerators' form of the pair JS (ratios for every row, no host sync), on the CPU
    ratio = accumulate(members, top_ps, rule, False, monkeypatch, ratio_form=True)
    torch.testing.assert_close(sparse.sums(), ratio.sums(), rtol=1e-10, atol=1e-12)
    identical = sparse.pairs.index((0, 3))
    assert sparse.pair_means()["js_distance"][identical] == [0.0] * len(top_ps)
    # members 0, 1, 2 against slowly truncated rows and scipy's relative entropy
    probs = [scipy.special.softmax(m.double().numpy(), axis=1) for m in members[:3]]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        for c, p in enumerate(top_ps):
            ti = np.array([slow_truncate(list(r), p, rule) for r in probs[i]])
            tj = np.array([slow_truncate(list(r), p, rule) for r in probs[j]])
            m = (ti + tj) / 2
            jsd = (scipy.special.rel_entr(ti, m).sum(1) + scipy.special.rel_entr(tj, m).sum(1))
            expected = np.sqrt(np.clip(jsd / (2 * math.log(2)), 0, 1)).mean()
            got = sparse.pair_means()["js_distance"][sparse.pairs.index((i, j))][c]
            assert got == pytest.approx(expected, rel=1e-9), (i, j, p)


@pytest.mark.parametrize("rule", ["nucleus", "paper"])
def test_member_levels_reproduce_dense_truncation(rule):
    logits = tricky_logits(24, 17, seed=4)
    levels = [0.05, 0.2, 0.5, 0.8, 1.0]
    ws = disagreement._Workspace(24, 17, len(levels))
    chunk = disagreement._Chunk(logits)
    member = disagreement._member_levels(chunk, levels, rule, ws)
    for c, p in enumerate(levels):
        kept = torch.from_numpy(member.entry) <= c
        ours = torch.where(kept, member.probs, 0.0) / member.mass[:, c : c + 1]
        expected = truncate_top_p(chunk.probs, p, rule)
        assert torch.equal(ours > 0, expected > 0), p  # the same kept tokens, ties included
        torch.testing.assert_close(ours, expected, rtol=1e-13, atol=0)


def test_wide_sort_keys_give_the_same_sums(monkeypatch):
    members = [tricky_logits(12, 19, seed) for seed in (5, 6)]
    narrow = accumulate(members, [0.1, 0.6, 1.0], "nucleus", True, monkeypatch)
    monkeypatch.setattr(disagreement, "_NARROW_KEY_BITS", 0)  # force uint64 keys
    wide = accumulate(members, [0.1, 0.6, 1.0], "nucleus", True, monkeypatch)
    assert wide._workspace.dtype == np.uint64 and narrow._workspace.dtype == np.uint32
    assert torch.equal(wide.sums(), narrow.sums())


def test_nonfinite_count_in_sums_raises_at_compute():
    """On an accelerator update() only counts NaN/inf positions (no host sync); the count
    travels with the sums (all-reduce) and compute() raises."""
    acc = DisagreementAccumulator(2, [0.5])
    acc.update([torch.randn(3, 4), torch.randn(3, 4)])
    sums = acc.sums()
    sums[-1] = 2  # the non-finite slot, as an accelerator update would have counted
    acc.load_sums(sums)
    with pytest.raises(NonFiniteLogitsError, match="2 of 3"):
        acc.compute()
    with pytest.raises(NonFiniteLogitsError):
        acc.pair_means()


@pytest.mark.parametrize("case", ["independent", "near-identical", "identical", "zeros", "one-hot"])
def test_ratio_form_equals_scipy(case):
    """The accelerators' JS (``q/m = 2 - p/m``, m floored, xlogy) against scipy row by row."""
    gen = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(30, 50, generator=gen, dtype=torch.float64) * 3, dim=1)
    q = torch.softmax(torch.randn(30, 50, generator=gen, dtype=torch.float64) * 3, dim=1)
    if case == "near-identical":
        q = p * (1 + 1e-6 * torch.randn(30, 50, generator=gen, dtype=torch.float64))
    elif case == "identical":
        q = p.clone()
    elif case == "zeros":  # truncated rows: zeros in one, both or neither
        p = torch.where(torch.rand(30, 50, generator=gen) < 0.6, p, 0.0)
        q = torch.where(torch.rand(30, 50, generator=gen) < 0.6, q, 0.0)
    elif case == "one-hot":
        p = torch.zeros(30, 50, dtype=torch.float64)
        p[:, 0] = 1.0
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    got = disagreement._js_divergence_ratio_bits(p, q)
    expected = np.array([jensenshannon(a, b, base=2) ** 2
                         for a, b in zip(p.numpy(), q.numpy(), strict=True)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-15)


# -- the fused path (the CUDA default), run on the CPU --------------------------------------
needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                    reason="torch.compile on the CPU needs a C++ compiler")


def five_members() -> list:
    members = [tricky_logits(40, 23, seed) for seed in (1, 2, 3)]
    members.append(members[0].clone())  # identical to member 0
    members.append(members[1] * (1 + 1e-7))  # nearly identical to member 1
    return members


def accumulate_fused(members, top_ps, rule, monkeypatch, compiled=False, rows=None):
    """The accumulator with the fused path on the CPU; fails unless the kernel (compiled by
    torch.compile when ``compiled``, else the eager function) summed every pair and row block.
    ``rows``: the most rows per block (default: the library's, more than the test's rows)."""
    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ("cpu",))
    monkeypatch.setattr(disagreement, "_COMPILE_FUSED", compiled)
    monkeypatch.setattr(disagreement, "_compiled", {})
    monkeypatch.setattr(disagreement, "_limit_warned", set())
    if rows is not None:
        monkeypatch.setattr(disagreement, "_FUSED_ROWS", rows)
    if compiled:
        torch._dynamo.reset()  # a fresh recompile budget: other tests compiled it too
    kernel = disagreement._compiled_pair_js("cpu")  # compiled and checked here
    assert kernel is not None, "the fused path fell back"
    if compiled:  # torch.compile's wrapper, not the eager function
        assert kernel._torchdynamo_orig_callable is disagreement._fused_pair_js
    shapes = []

    def counted(*args):
        out = kernel(*args)
        shapes.append(tuple(tuple(a.shape) for a in args))
        return out

    monkeypatch.setitem(disagreement._compiled, "cpu", counted)
    acc = accumulate(members, top_ps, rule, False, monkeypatch)
    assert disagreement._compiled["cpu"] is counted, "the fused path fell back"
    # one call per pair and row block, every level in it, always the same shapes
    n, vocab = members[0].shape
    step = prediction._chunk_rows(members[0])
    block = disagreement._block_rows(step)
    blocks = sum(-(-min(step, n - start) // block) for start in range(0, n, step))
    assert len(shapes) == len(acc.pairs) * blocks and len(set(shapes)) == 1
    assert shapes[0][0] == (block, vocab)
    return acc


def assert_means_close(got, expected):
    """Per pair and level the mean JS distance to 1e-10, or to 2e-8 absolute: rows that are
    equal (or nearly) after truncation but normalised from different rows can differ by an ulp
    in each entry, which moves their divergence by ~1e-16 and, through the square root, their
    distance by up to ~1e-8 (sqrt(a) - sqrt(b) <= sqrt(a - b)); the paths normalise in
    different orders. Top-1 agreement counts are exact."""
    got_means, expected_means = got.pair_means(), expected.pair_means()
    assert got_means["argmax_agreement"] == expected_means["argmax_agreement"]
    np.testing.assert_allclose(got_means["js_distance"], expected_means["js_distance"],
                               rtol=1e-10, atol=2e-8)


@pytest.mark.parametrize("rule", ["nucleus", "paper"])
@pytest.mark.parametrize("top_ps", [[0.05, 0.1, 0.3, 0.5, 0.9, 1.0], [0.7, 0.05, 0.3, 0.3]])
def test_fused_path_equals_sparse_path(rule, top_ps, monkeypatch):
    members = five_members()
    sparse = accumulate(members, top_ps, rule, True, monkeypatch)
    fused = accumulate_fused(members, top_ps, rule, monkeypatch)
    assert_means_close(fused, sparse)
    assert fused.pair_means()["js_distance"][fused.pairs.index((0, 3))] == [0.0] * len(top_ps)


@pytest.mark.parametrize("rows", [16, 20, 40])
def test_fused_path_in_row_blocks_pads_with_rows_that_add_nothing(rows, monkeypatch):
    """40 positions in blocks of 16 (the last padded with 8 rows), 20 (none padded) or 40:
    the kernel always sees one shape, and the sums are the sparse path's."""
    members = five_members()
    top_ps = [0.05, 0.3, 0.9, 1.0]
    sparse = accumulate(members, top_ps, "nucleus", True, monkeypatch)
    fused = accumulate_fused(members, top_ps, "nucleus", monkeypatch, rows=rows)
    assert_means_close(fused, sparse)
    assert fused.sums()[0] == 40  # padding rows are not positions


def test_fused_blocks_are_whole_chunks_when_the_vocabulary_is_large(monkeypatch):
    """A chunk of 16 rows (as a vocabulary of 262k tokens gives on a GPU) is one block of 16,
    not a block of 512 mostly padding; 40 positions: blocks 16, 16 and 8 + 8 padding."""
    assert disagreement._block_rows(16) == 16
    monkeypatch.setattr(prediction, "_CHUNK_ELEMENTS", 16 * 23)
    members = five_members()
    sparse = accumulate(members, [0.3, 1.0], "nucleus", True, monkeypatch)
    fused = accumulate_fused(members, [0.3, 1.0], "nucleus", monkeypatch)
    assert_means_close(fused, sparse)


@needs_compiler
def test_fused_kernel_past_the_recompile_limit_takes_the_per_level_path(monkeypatch):
    """torch.compile runs a function eagerly once it has been compiled recompile_limit times
    (for the fused kernel: [rows, levels, V] temporaries); compiled with fullgraph, a new
    shape raises instead, and that shape takes the per-level path, with a warning, while the
    shapes compiled before keep the kernel."""
    with torch._dynamo.config.patch(recompile_limit=2):  # the check + one shape
        first = accumulate_fused(five_members(), [0.3, 1.0], "nucleus", monkeypatch,
                                 compiled=True)
        kernel, summed = disagreement._compiled["cpu"], []

        def counted(*args):
            out = kernel(*args)
            summed.append(1)
            return out

        monkeypatch.setitem(disagreement._compiled, "cpu", counted)
        other = [tricky_logits(40, 30, seed) for seed in (5, 6, 7)]  # vocabulary 30: new shape
        with pytest.warns(RuntimeWarning, match="reached torch.compile's recompile limit"):
            per_level = accumulate(other, [0.3, 1.0], "nucleus", False, monkeypatch)
        assert summed == [] and disagreement._compiled["cpu"] is counted
        expected = accumulate(other, [0.3, 1.0], "nucleus", True, monkeypatch)
        assert_means_close(per_level, expected)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once
            accumulate(other, [0.3, 1.0], "nucleus", False, monkeypatch)
            again = accumulate(five_members(), [0.3, 1.0], "nucleus", False, monkeypatch)
        assert len(summed) == len(again.pairs) and torch.equal(again.sums(), first.sums())
    torch._dynamo.reset()  # the next compiling test starts with a fresh budget


@pytest.mark.parametrize(("chunk", "block"), [(1, 1), (512, 512), (513, 257), (699, 350),
                                              (1022, 511), (1024, 512), (1025, 342)])
def test_block_rows_split_a_full_chunk_evenly(chunk, block):
    assert disagreement._block_rows(chunk) == block
    blocks = -(-chunk // block)
    assert block <= disagreement._FUSED_ROWS and blocks * block - chunk < blocks


def test_row_blocks_padding_is_all_zero_rows():
    logits = tricky_logits(5, 9, seed=2)
    table = disagreement._level_table([0.2, 1.0], logits.device)
    member = disagreement._device_levels(disagreement._Chunk(logits).probs, table, "nucleus")
    blocks = disagreement._row_blocks(member, 4)
    assert [b.probs.shape[0] for b in blocks] == [4, 4]
    assert torch.equal(torch.cat([b.probs for b in blocks])[:5], member.probs)
    pad = blocks[1]
    assert torch.equal(pad.probs[1:], torch.zeros(3, 9, dtype=torch.float64))
    assert torch.equal(pad.mass[1:], torch.ones(3, 2, dtype=torch.float64))
    assert pad.entry.dtype == torch.uint8 and not pad.entry[1:].any()
    # two padded rows against each other: exactly 0 at every level
    zero = disagreement._DeviceLevels(pad.probs[1:], pad.entry[1:], pad.mass[1:])
    assert disagreement._fused_pair_js(*zero, *zero, table.place).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("rule", ["nucleus", "paper"])
def test_device_levels_reproduce_dense_truncation(rule):
    """Levels in any order (here unsorted, with a repeat): the entry places and kept masses
    give exactly the dense path's truncated rows."""
    logits = tricky_logits(24, 17, seed=4)
    levels = [0.8, 0.05, 1.0, 0.5, 0.5, 0.2]
    chunk = disagreement._Chunk(logits)
    table = disagreement._level_table(levels, chunk.probs.device)
    member = disagreement._device_levels(chunk.probs, table, rule)
    for c, p in enumerate(levels):
        kept = member.entry <= table.place[c]
        ours = torch.where(kept, member.probs, 0.0) / member.mass[:, c : c + 1]
        expected = truncate_top_p(chunk.probs, p, rule)
        assert torch.equal(ours > 0, expected > 0), p
        torch.testing.assert_close(ours, expected, rtol=1e-13, atol=0)


@needs_compiler
def test_compiled_fused_kernel_equals_eager(monkeypatch):
    """The kernel torch.compile makes of the fused function (inductor's C++ backend here,
    Triton on a GPU) sums the same as the eager function."""
    members = five_members()
    top_ps = [0.7, 0.05, 0.3, 1.0]
    eager = accumulate_fused(members, top_ps, "nucleus", monkeypatch)
    compiled = accumulate_fused(members, top_ps, "nucleus", monkeypatch, compiled=True)
    assert_means_close(compiled, eager)


def test_fused_path_falls_back_when_compilation_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no working compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ("cpu",))
    monkeypatch.setattr(disagreement, "_compiled", {})
    members = five_members()
    with pytest.warns(RuntimeWarning, match="fused top-p JS kernel is unavailable on cpu "
                                            r"\(RuntimeError: no working compiler\)"):
        fallback = accumulate(members, [0.1, 1.0], "nucleus", False, monkeypatch)
    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ())
    dense = accumulate(members, [0.1, 1.0], "nucleus", False, monkeypatch)
    assert torch.equal(fallback.sums(), dense.sums())
    assert disagreement._compiled == {"cpu": None}  # tried once per process, not per batch


def test_fused_path_falls_back_when_a_later_call_fails(monkeypatch):
    """A kernel that compiled but fails later (say, recompiling for a new shape) costs speed,
    not the run: that chunk and the rest go through the per-level path, counted once."""
    def failing(*args):
        raise RuntimeError("recompilation failed")

    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ("cpu",))
    monkeypatch.setattr(disagreement, "_COMPILE_FUSED", False)
    monkeypatch.setattr(disagreement, "_compiled", {})
    monkeypatch.setattr(disagreement, "_fused_pair_js", failing)
    members = five_members()
    with pytest.warns(RuntimeWarning, match="recompilation failed"):
        fallback = accumulate(members, [0.1, 1.0], "nucleus", False, monkeypatch)
    assert disagreement._compiled == {"cpu": None}
    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ())
    dense = accumulate(members, [0.1, 1.0], "nucleus", False, monkeypatch)
    assert torch.equal(fallback.sums(), dense.sums())
