"""Corpus statistics against independent counts: plain loops, scipy, hand formulas, invariances."""

from __future__ import annotations

import itertools
import lzma
import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch

from fmaudit.corpus import CorpusOptions, bundled, open_corpus
from fmaudit.corpus import stats as st
from fmaudit.corpus.stats import (
    InterpolatedNgram,
    NgramCounts,
    compression_bits_per_symbol,
    context_cross_entropy_bits,
    corpus_stats,
    entropy_bits,
    kmer_ids,
    unigram_cross_entropy_bits,
)
from fmaudit.tokenizer import build_tokenizer

IUPAC = "RYSWKMBDHV"


def _genome() -> dict[str, str]:
    rng = np.random.default_rng(11)

    def seq(n: int) -> list[str]:
        return list(rng.choice(list("ACGT"), n, p=[0.35, 0.15, 0.15, 0.35]))

    a = seq(1500)
    a[100:400] = [c.lower() for c in a[100:400]]
    a[700:760] = "N" * 60
    a[900] = "Y"
    b = seq(900)
    b[0:50] = "n" * 50
    b[500:650] = [c.lower() for c in b[500:650]]
    return {"a": "".join(a), "b": "".join(b), "c": "".join(seq(333))}


def test_dna_stats_match_a_plain_python_count(make_fasta) -> None:
    genome = _genome()
    corpus = open_corpus(make_fasta(genome), CorpusOptions(holdout="0.2"))
    k = 2
    tok = build_tokenizer(f"kmer:{k}")
    vocab = {"".join(p): 5 + i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    r = corpus_stats(corpus, tok)

    # --- independent count: one character at a time
    length = gc = acgt = n = lower = 0
    for s in genome.values():
        for ch in s:
            length += 1
            up = "N" if ch.upper() in IUPAC else ch.upper()
            n += up == "N"
            gc += up in "GC"
            acgt += up in "ACGT"
            lower += ch.islower()
    # --- tokens: non-overlapping k-mers of each N-free stretch of each split part
    parts: dict[str, list[str]] = {"train": [], "holdout": []}
    for s in genome.values():
        cut = len(s) - int(len(s) * 0.2)
        for split, piece in (("train", s[:cut]), ("holdout", s[cut:])):
            cleaned = "".join("N" if c.upper() in IUPAC else c.upper() for c in piece)
            stretch = ""
            for ch in cleaned + "N":
                if ch == "N":
                    if stretch:
                        parts[split].append(stretch)
                    stretch = ""
                else:
                    stretch += ch
    ids = {split: [vocab[p[i:i + k]] for p in ps for i in range(0, len(p) - k + 1, k)]
           for split, ps in parts.items()}
    every = Counter(ids["train"] + ids["holdout"])
    train = Counter(ids["train"])
    v = 4**k + 5

    assert r["records"] == 3 and r["length"] == length
    assert r["gc"] == pytest.approx(gc / acgt)
    assert r["n_fraction"] == pytest.approx(n / length)
    assert r["lowercase_fraction"] == pytest.approx(lower / length)
    assert r["tokens"] == sum(every.values())
    assert r["train_tokens"] == len(ids["train"]) and r["holdout_tokens"] == len(ids["holdout"])
    h = scipy.stats.entropy(list(every.values()), base=2)
    assert r["unigram_entropy_bits"] == pytest.approx(h)
    assert r["unigram_entropy_normalized"] == pytest.approx(h / math.log2(v))
    n_train = sum(train.values())
    ce = -np.mean([math.log2((train[t] + 1) / (n_train + v)) for t in ids["holdout"]])
    assert r["unigram_cross_entropy_bits"] == pytest.approx(ce)
    symbols = "".join(parts["train"] + parts["holdout"])
    packed = lzma.compress(symbols.encode(), format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                           preset=6)
    assert r["compression_symbols"] == len(symbols)
    assert r["compression_bits_per_symbol"] == pytest.approx(8 * len(packed) / len(symbols))
    assert r["unk_fraction"] == 0.0 and r["vocab_size"] == v and r["tokenizer"] == "kmer:2"
    assert set(r["context_cross_entropy_bits"]) == {"1", "2", "3"}
    assert all(0 < x < 2 * math.log2(v) for x in r["context_cross_entropy_bits"].values())


def test_no_holdout_leaves_heldout_stats_null(make_fasta) -> None:
    corpus = open_corpus(make_fasta(_genome()), CorpusOptions(holdout="0"))
    r = corpus_stats(corpus, build_tokenizer("kmer:1"))
    assert r["unigram_cross_entropy_bits"] is None
    assert r["context_cross_entropy_bits"] == {"1": None, "2": None, "3": None}
    assert r["tokens"] > 0 and r["train_tokens"] is None


def test_text_stats(make_text) -> None:
    docs = ["the cat sat on the mat " * 30, "a dog ran in the fog " * 30, "the end " * 40]
    r = corpus_stats(open_corpus(make_text(docs)), spec="char")
    assert r["gc"] is None and r["n_fraction"] is None and r["kind"] == "text"
    assert r["tokenizer"] == "char" and r["tokens"] == r["length"]
    # repetitive text: context makes the next character nearly certain
    ctx = r["context_cross_entropy_bits"]
    assert ctx["3"] < ctx["1"] < r["unigram_cross_entropy_bits"]


def test_long_stretches_are_cut_in_bounded_pieces(make_fasta, monkeypatch) -> None:
    monkeypatch.setattr(st, "READ_CHUNK", 64)
    monkeypatch.setattr(st, "MAX_CARRY", 100)
    genome = _genome()
    corpus = open_corpus(make_fasta(genome), CorpusOptions(holdout="0"))
    pieces = list(st._pieces(corpus, "all", {}))
    assert max(map(len, pieces)) <= 100 + 64
    expected = "".join("N" if c.upper() in IUPAC else c.upper() for s in genome.values() for c in s)
    assert "".join(pieces) == expected.replace("N", "")


# --------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_kmer_shortcut_equals_the_tokenizer(k: int) -> None:
    rng = np.random.default_rng(k)
    tok = build_tokenizer(f"kmer:{k}")
    for n in (0, 1, k - 1, k, 5 * k + 1, 1000):
        piece = "".join(rng.choice(list("ACGT"), n))
        expected = tok(piece, add_special_tokens=False)["input_ids"]
        assert kmer_ids(piece, k).tolist() == expected
    with pytest.raises(ValueError):
        kmer_ids("ACGN", 2)


def test_entropy_bits_matches_scipy_and_is_permutation_invariant() -> None:
    counts = np.array([5, 0, 3, 9, 1])
    assert entropy_bits(counts) == pytest.approx(scipy.stats.entropy(counts, base=2))
    assert entropy_bits(counts[::-1]) == pytest.approx(entropy_bits(counts))
    assert entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        entropy_bits([0, 0])


def test_unigram_cross_entropy_hand_formula() -> None:
    counts = [3, 1, 0, 6]
    ids = [0, 2, 3, 3, 1]
    for alpha in (1.0, 0.5):
        p = [(c + alpha) / (10 + alpha * 4) for c in counts]
        expected = -np.mean([math.log2(p[i]) for i in ids])
        assert unigram_cross_entropy_bits(counts, ids, alpha=alpha) == pytest.approx(expected)
    as_torch = unigram_cross_entropy_bits(torch.tensor(counts), torch.tensor(ids))
    assert as_torch == pytest.approx(unigram_cross_entropy_bits(counts, ids))
    # a larger vocabulary spreads the add-one mass over more (unseen) tokens
    p6 = [(c + 1) / (10 + 6) for c in counts]
    assert unigram_cross_entropy_bits(counts, ids, vocab_size=6) == pytest.approx(
        -np.mean([math.log2(p6[i]) for i in ids]))
    with pytest.raises(ValueError):
        unigram_cross_entropy_bits(counts, [])


def _slow_log2p(train, evals, v, lam, order):
    uni = Counter(t for s in train for t in s)
    total = sum(uni.values())
    ngram, hist = Counter(), Counter()
    for s in train:
        for k in range(1, order + 1):
            for i in range(k, len(s)):
                h = tuple(s[i - k:i])
                ngram[h, s[i]] += 1
                hist[h] += 1
    out = {k: [] for k in range(order + 1)}
    for s in evals:
        for i in range(order, len(s)):
            w = s[i]
            p = (uni[w] + 1) / (total + v)
            out[0].append(math.log2(p))
            for k in range(1, order + 1):
                h = tuple(s[i - k:i])
                c_h = hist[h]
                bucket = 0 if c_h == 0 else min(1 + math.floor(math.log2(c_h)),
                                                st.N_BUCKETS - 1)
                weight = lam[k][bucket]
                ml = ngram[h, w] / c_h if c_h else 0.0
                p = weight * ml + (1 - weight) * p
                out[k].append(math.log2(p))
    return out


def _markov_tokens(n: int, v: int, step: int, seed: int) -> list[int]:
    """``n`` tokens in ``[0, v)`` where each depends on the one before (``x * step`` plus a
    seeded jump below ``step``), so context models have something to learn."""
    rng = np.random.default_rng(seed)
    seq = [0]
    for _ in range(n - 1):
        seq.append((seq[-1] * step + int(rng.integers(step))) % v)
    return seq


def test_interpolated_ngram_matches_slow_dicts() -> None:
    v = 7
    # a Markov-ish source so contexts matter, split into segments of varying length
    seq = _markov_tokens(3001, v, step=3, seed=0)
    cuts = [0, 17, 400, 401, 1200, 2000, 2600, 3001]
    segs = [np.array(seq[a:b]) for a, b in itertools.pairwise(cuts)]
    train, evals = segs[:-1], [*segs[-1:], np.array([1, 2])]  # a too-short eval segment
    model = InterpolatedNgram(v, order=3).fit(train)
    fast = model.log2_probs(evals)
    slow = _slow_log2p([s.tolist() for s in train], [s.tolist() for s in evals], v, model.lam, 3)
    for k in range(4):
        np.testing.assert_allclose(fast[k], slow[k], rtol=1e-10, atol=1e-12)
    assert np.all((model.lam >= 0) & (model.lam <= 1)) and np.all(model.lam[:, 0] == 0)
    # sparse tables: never more rows than observed n-grams
    counts = NgramCounts(train, v, 3)
    positions = sum(max(0, len(s) - 3) for s in train)
    assert all(len(counts.tables[k][0]) <= positions + len(train) * 3 for k in (1, 2, 3))
    assert len(counts.tables[3][0]) < v**4


def test_context_cross_entropy_is_the_mean_of_the_slow_log_probabilities() -> None:
    from fmaudit.corpus.stats import context_cross_entropy_bits

    v = 6
    seq = _markov_tokens(2001, v, step=2, seed=3)
    train, evals = [np.array(seq[:1500])], [np.array(seq[1500:])]
    ce, positions = context_cross_entropy_bits(train, evals, v, orders=(1, 2, 3))
    model = InterpolatedNgram(v, order=3).fit(train)
    slow = _slow_log2p([s.tolist() for s in train], [s.tolist() for s in evals], v, model.lam, 3)
    assert positions == len(slow[0]) == 501 - 3
    for k in (1, 2, 3):
        assert ce[str(k)] == pytest.approx(-np.mean(slow[k]), rel=1e-10)


def test_dev_slice_is_the_end_of_the_stream() -> None:
    segments = [np.arange(5), np.arange(10, 15)]
    fit, dev = InterpolatedNgram._split_dev(segments, 0.3)
    assert [s.tolist() for s in dev] == [[12, 13, 14]]
    assert [s.tolist() for s in fit] == [[0, 1, 2, 3, 4], [10, 11]]
    fit, dev = InterpolatedNgram._split_dev(segments, 0.7)  # across a segment boundary
    assert [s.tolist() for s in dev] == [[3, 4], [10, 11, 12, 13, 14]]
    assert [s.tolist() for s in fit] == [[0, 1, 2]]


def test_interpolated_ngram_is_normalised() -> None:
    rng = np.random.default_rng(1)
    v = 9
    train = [rng.integers(0, v, 500), np.tile(np.arange(v), 40)]
    model = InterpolatedNgram(v, order=3).fit(train)
    for history in ([0, 1, 2], [8, 0, 1], [5, 5, 5]):  # seen, cyclic and unseen contexts
        probe = [np.array([*history, w]) for w in range(v)]
        logp = model.log2_probs(probe)
        for k in range(4):
            assert np.exp2(logp[k]).sum() == pytest.approx(1.0, abs=1e-9)


def test_context_helps_on_a_markov_chain_and_not_on_noise() -> None:
    rng = np.random.default_rng(2)
    v = 16
    cycle = np.tile(np.arange(10), 300)
    ce, n = context_cross_entropy_bits([cycle[:2500]], [cycle[2500:]], v)
    uni = unigram_cross_entropy_bits(np.bincount(cycle[:2500], minlength=v), cycle[2503:], v)
    assert n == 497 and ce["1"] < 0.1 < math.log2(10) - 0.1 < uni
    noise = rng.integers(0, v, 20_000)
    ce, _ = context_cross_entropy_bits([noise[:16_000]], [noise[16_000:]], v)
    uni = unigram_cross_entropy_bits(np.bincount(noise[:16_000], minlength=v), noise[16_003:], v)
    assert all(abs(ce[k] - uni) < 0.05 for k in ("1", "2", "3"))  # no gain, no overfit


def test_deterministic_training_never_gives_zero_probability() -> None:
    v = 12
    cycle = np.tile(np.arange(10), 200)
    model = InterpolatedNgram(v, order=3).fit([cycle])
    assert np.all(model.lam < 1) and model.lam[1].max() > 0.9  # contexts are trusted...
    surprise = np.array([0, 1, 2, 3, 9, 11, 4, 5])  # ...but a break of the cycle stays finite
    logp = model.log2_probs([surprise])
    assert all(np.isfinite(logp[k]).all() for k in range(4))


def test_compression_rate() -> None:
    rng = np.random.default_rng(3)
    random_dna = "".join(rng.choice(list("ACGT"), 40_000))
    bits, n = compression_bits_per_symbol([random_dna[:15_000], random_dna[15_000:]])
    assert n == 40_000 and 1.9 < bits < 2.4  # ~2 bits per random base, plus LZMA overhead
    repetitive, _ = compression_bits_per_symbol(["ACGT" * 10_000])
    assert repetitive < 0.1
    capped, n = compression_bits_per_symbol([random_dna], max_symbols=1000)
    assert n == 1000 and capped is not None and capped > 1.5
    assert compression_bits_per_symbol([]) == (None, 0)


def test_bundled_corpora_stats_are_sane() -> None:
    dna = corpus_stats(open_corpus(bundled("dna")))
    text = corpus_stats(open_corpus(bundled("text")))
    assert dna["tokenizer"] == "kmer:6" and text["tokenizer"] == "bpe:4101"
    assert 0.35 < dna["gc"] < 0.5 and 0 < dna["n_fraction"] < 0.01
    # the study's contrast: DNA tokens are near-uniform, English ones are not
    assert dna["unigram_entropy_normalized"] > 0.9 > text["unigram_entropy_normalized"]
    assert text["context_cross_entropy_bits"]["2"] < text["unigram_cross_entropy_bits"] - 1


def test_context_caps_bound_each_split_separately(make_fasta) -> None:
    """The context model is fit on the first max_context_tokens train tokens and scored on
    the first max_eval_tokens held-out ones (one contig: one stretch per split)."""
    rng = np.random.default_rng(5)
    genome = make_fasta({"c1": "".join(rng.choice(list("ACGT"), 400))})
    c = open_corpus(genome, CorpusOptions(holdout="0.5"))
    tok = build_tokenizer("kmer:1")
    out = corpus_stats(c, tok, max_context_tokens=50, max_eval_tokens=30)
    assert out["context_train_tokens"] == 50
    assert out["context_eval_positions"] == 30 - 3  # a full 3-token history
    wide = corpus_stats(c, tok, max_context_tokens=10**6, max_eval_tokens=10**6)
    assert wide["context_train_tokens"] == out["train_tokens"] == 200
    assert wide["context_eval_positions"] == 200 - 3
