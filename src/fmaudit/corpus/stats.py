"""Model-free "data entropy" references: what a model's entropy should be read against.

All functions are pure (numbers in, numbers out) except ``corpus_stats``, which streams a corpus
through them in bounded memory:

* unigram entropy ``H1 = -sum_v p_v log2 p_v`` (plug-in, ``p_v = c_v / N``), and ``H1 / log2 V``;
* smoothed unigram cross-entropy of held-out tokens (add-one by default);
* order-1..3 context cross-entropy of an interpolated n-gram model (Jelinek-Mercer, weights
  tuned by EM on held-back train tokens), fit on train tokens and evaluated on held-out tokens;
* an LZMA compression rate in bits per symbol (a classical upper bound on the entropy rate).

DNA is tokenized per N-free stretch (N runs are gaps, as windows with N are skipped by default);
n-gram contexts never cross a stretch or document boundary.
"""

from __future__ import annotations

import lzma
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fmaudit.errors import FmauditError
from fmaudit.tokenizer.specs import SPECIAL_TOKENS

ORDERS = (1, 2, 3)
CONTEXT_SMOOTHING = ("interpolated Jelinek-Mercer over orders 0..k (weights per history-count "
                     "bucket, EM-tuned on the last 10% of train tokens), add-one unigram")
READ_CHUNK = 1 << 20
# longest N-free DNA stretch tokenized in one piece (bounded memory); divisible by every k <= 8,
# so cutting a stretch keeps the k-mer phase
MAX_CARRY = 720_720
TOKENIZE_BATCH_CHARS = 1 << 20
_N_RUN = re.compile(r"[Nn]+")


# --------------------------------------------------------------------------- unigram
def entropy_bits(counts: Any) -> float:
    """Plug-in Shannon entropy ``-sum_v p_v log2 p_v`` of a count vector (``p_v = c_v / N``).

    Raises:
        ValueError: no counts.
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ValueError("entropy of an empty count vector")
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum())


def unigram_cross_entropy_bits(train_counts: Any, eval_token_ids: Any,
                               vocab_size: int | None = None, alpha: float = 1.0) -> float:
    """Cross-entropy in bits of ``eval_token_ids`` under the smoothed unigram model of
    ``train_counts``: ``p_v = (c_v + alpha) / (N + alpha * V)`` (``alpha=1``: add-one/Laplace,
    ``alpha=0.5``: Jeffreys), ``CE = -mean_i log2 p_{x_i}``.

    Args:
        train_counts: ``[V]`` counts (numpy or torch). ``vocab_size`` defaults to its length.
        eval_token_ids: token ids to score (any shape).

    Example:
        >>> round(unigram_cross_entropy_bits([3, 1], [0, 1]), 4)  # p = (4/6, 2/6)
        1.085
    """
    c = np.asarray(train_counts.cpu() if hasattr(train_counts, "cpu") else train_counts,
                   dtype=np.float64)
    v = len(c) if vocab_size is None else int(vocab_size)
    if v < len(c):
        raise ValueError(f"vocab_size {v} is smaller than the count vector ({len(c)})")
    if alpha <= 0:
        raise ValueError("alpha must be positive (an unseen token would get probability 0)")
    ids = np.asarray(eval_token_ids.cpu() if hasattr(eval_token_ids, "cpu") else eval_token_ids,
                     dtype=np.int64).ravel()
    if ids.size == 0:
        raise ValueError("no tokens to evaluate")
    c = np.pad(c, (0, v - len(c)))
    logp = np.log2(c + alpha) - math.log2(c.sum() + alpha * v)
    return float(-logp[ids].mean())


# --------------------------------------------------------------------------- n-gram contexts
def _pack(cols: Sequence[np.ndarray], v: int) -> np.ndarray:
    """Base-``v`` number of the columns, oldest first: ``((c0 * v + c1) * v + c2)...``."""
    acc = np.zeros(len(cols[0]), dtype=np.uint64)
    vv = np.uint64(v)
    for c in cols:
        acc = acc * vv + c.astype(np.uint64)
    return acc


def _segments(segments: Iterable[Any]) -> list[np.ndarray]:
    return [np.asarray(s, dtype=np.int64) for s in segments]


class NgramCounts:
    """Counts of the n-grams (orders 1..``order`` of context) seen inside segments.

    Kept sparse, as sorted arrays of packed keys for the contexts that occur (never a dense
    ``V^k`` table): per order k, the (k+1)-gram keys and counts, and per history the total
    ``c(h)`` of tokens seen after it.
    """

    def __init__(self, segments: list[np.ndarray], vocab_size: int, order: int) -> None:
        if vocab_size ** (order + 1) >= 2**64:
            raise ValueError(f"vocabulary {vocab_size} too large for order-{order} keys")
        self.v, self.order = int(vocab_size), order
        self.unigram = np.zeros(self.v, dtype=np.int64)
        for seg in segments:
            self.unigram += np.bincount(seg, minlength=self.v)
        self.tokens = int(self.unigram.sum())
        self.tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for k in range(1, order + 1):
            parts = [_pack([seg[j:len(seg) - k + j] for j in range(k + 1)], self.v)
                     for seg in segments if len(seg) > k]
            keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
            del parts
            ngram, count = np.unique(keys, return_counts=True)
            del keys
            hist = ngram // np.uint64(self.v)  # sorted too: the token is the lowest digit
            hist_keys, first = np.unique(hist, return_index=True)
            del hist
            hist_total = np.add.reduceat(count, first) if len(count) else count
            # int32 counts: half the memory of numpy's int64 (a table holds < 2^31 tokens)
            self.tables[k] = (ngram, count.astype(np.int32), hist_keys,
                              hist_total.astype(np.int32))

    def lookup(self, k: int, segments: list[np.ndarray], top: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(w, c(h, w), c(h))`` at every position with ``top`` tokens of history, for the
        ``k`` tokens before it."""
        segs = [s for s in segments if len(s) > top]
        if not segs:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        w = np.concatenate([s[top:] for s in segs])
        h = np.concatenate([_pack([s[top - k + j:len(s) - k + j] for j in range(k)], self.v)
                            for s in segs])
        ngram, count, hist_keys, hist_total = self.tables[k]
        c_h = np.zeros(len(w), dtype=np.int64)
        c_hw = np.zeros(len(w), dtype=np.int64)
        if len(hist_keys):
            hi = np.minimum(np.searchsorted(hist_keys, h), len(hist_keys) - 1)
            c_h = np.where(hist_keys[hi] == h, hist_total[hi], 0)
            key = h * np.uint64(self.v) + w.astype(np.uint64)
            ki = np.minimum(np.searchsorted(ngram, key), len(ngram) - 1)
            c_hw = np.where(ngram[ki] == key, count[ki], 0)
        return w, c_hw, c_h


N_BUCKETS = 24


def count_bucket(c_h: np.ndarray) -> np.ndarray:
    """History-count bucket: 0 for an unseen history, else ``1 + floor(log2 c(h))`` (capped)."""
    b = np.zeros(len(c_h), dtype=np.int64)
    seen = c_h > 0
    b[seen] = 1 + np.floor(np.log2(c_h[seen])).astype(np.int64)
    return np.minimum(b, N_BUCKETS - 1)


class InterpolatedNgram:
    """Interpolated (Jelinek-Mercer) n-gram model with weights tuned on held-back train data.

    ``P_0(w) = (c(w) + 1) / (N + V)`` (add-one) and, for the ``k`` tokens ``h`` before ``w``,
    ``P_k(w | h) = lam_k[b(h)] * c(h, w) / c(h) + (1 - lam_k[b(h)]) * P_{k-1}(w | h')``, where
    ``h'`` drops the oldest token and ``b(h)`` buckets ``c(h)`` by powers of two (an unseen
    history has ``lam = 0``). The weights are fit by EM, order by order, to maximise the
    likelihood of the last ``dev_fraction`` of the train tokens under counts of the rest (with
    one extra zero-responsibility observation per bucket, so ``lam < 1`` and every token keeps
    a non-zero probability); the final counts use all train tokens. A context that does not
    help gets a weight near 0, so ``P_k`` falls back to ``P_{k-1}`` instead of over-trusting
    sparse counts.
    """

    def __init__(self, vocab_size: int, order: int = 3, dev_fraction: float = 0.1,
                 em_steps: int = 40) -> None:
        self.v, self.order = int(vocab_size), order
        self.dev_fraction, self.em_steps = dev_fraction, em_steps
        self.lam = np.zeros((order + 1, N_BUCKETS))
        self.counts: NgramCounts | None = None

    @staticmethod
    def _split_dev(segments: list[np.ndarray], fraction: float
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The last ``fraction`` of the tokens (stream order) as dev, the rest to fit."""
        want = int(sum(len(s) for s in segments) * fraction)
        fit, dev = list(segments), []
        while want > 0 and fit:
            seg = fit.pop()
            take = min(want, len(seg))
            dev.insert(0, seg[len(seg) - take:])
            if take < len(seg):
                fit.append(seg[:len(seg) - take])
            want -= take
        return fit, dev

    def _probs(self, counts: NgramCounts, segments: list[np.ndarray], top: int,
               lam: np.ndarray, upto: int) -> dict[int, np.ndarray]:
        w, _, _ = counts.lookup(1, segments, top) if top else (np.concatenate(segments), 0, 0)
        p = (counts.unigram[w] + 1.0) / (counts.tokens + self.v)
        out = {0: p}
        for k in range(1, upto + 1):
            _, c_hw, c_h = counts.lookup(k, segments, top)
            ml = np.where(c_h > 0, c_hw / np.maximum(c_h, 1), 0.0)
            weight = lam[k][count_bucket(c_h)]
            p = weight * ml + (1.0 - weight) * p
            out[k] = p
        return out

    def fit(self, segments: Iterable[Any]) -> InterpolatedNgram:
        """Tune the weights (EM on a dev slice of ``segments``) and count all of them."""
        segs = _segments(segments)
        fit, dev = self._split_dev(segs, self.dev_fraction)
        held = NgramCounts(fit, self.v, self.order)
        for k in range(1, self.order + 1):
            lower = self._probs(held, dev, self.order, self.lam, k - 1)[k - 1]
            _, c_hw, c_h = held.lookup(k, dev, self.order)
            ml = np.where(c_h > 0, c_hw / np.maximum(c_h, 1), 0.0)
            bucket = count_bucket(c_h)
            n_b = np.bincount(bucket, minlength=N_BUCKETS)
            lam = np.full(N_BUCKETS, 0.5)
            lam[0] = 0.0
            for _ in range(self.em_steps):
                wl = lam[bucket]
                mix = wl * ml + (1.0 - wl) * lower
                resp = np.where(mix > 0, wl * ml / np.where(mix > 0, mix, 1.0), 0.0)
                # one pseudo-observation with responsibility 0 keeps lam < 1, so a token never
                # seen after a history keeps a non-zero probability
                lam = np.bincount(bucket, resp, N_BUCKETS) / (n_b + 1.0)
                lam[0] = 0.0
            self.lam[k] = lam
        del held  # free the tuning counts before counting everything
        self.counts = NgramCounts(segs, self.v, self.order)
        return self

    def log2_probs(self, segments: Iterable[Any]) -> dict[int, np.ndarray]:
        """``log2 P_k(w_i | history)`` for ``k = 0..order`` at every position with a full
        ``order``-token history inside its segment (the same positions for every k)."""
        if self.counts is None:
            raise RuntimeError("fit the model first")
        segs = [s for s in _segments(segments) if len(s) > self.order]
        if not segs:
            return {k: np.zeros(0) for k in range(self.order + 1)}
        probs = self._probs(self.counts, segs, self.order, self.lam, self.order)
        return {k: np.log2(p) for k, p in probs.items()}


def context_cross_entropy_bits(train_segments: Iterable[Any], eval_segments: Iterable[Any],
                               vocab_size: int, orders: Sequence[int] = ORDERS
                               ) -> tuple[dict[str, float | None], int]:
    """Held-out cross-entropy (bits/token) with 1..max(orders) tokens of context under
    ``InterpolatedNgram`` fit on ``train_segments``, over the eval positions that have a full
    ``max(orders)``-token history: ``CE_k = -mean_i log2 P_k(w_i | h_i)``.

    Returns:
        ``({"1": bits, "2": bits, "3": bits}, positions)``; values are None with no position.
    """
    model = InterpolatedNgram(vocab_size, max(orders)).fit(train_segments)
    logp = model.log2_probs(eval_segments)
    n = len(logp[0])
    return {str(k): (float(-logp[k].mean()) if n else None) for k in orders}, n


# --------------------------------------------------------------------------- compression
class LzmaRate:
    """Streaming compression rate: ``8 * len(lzma(text)) / symbols`` (UTF-8 bytes for text)
    through one LZMA compressor (xz, preset 6), stopping after ``max_symbols`` symbols."""

    method = "lzma (xz, preset 6)"

    def __init__(self, max_symbols: int | None = None) -> None:
        self._comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=6)
        self.max_symbols = max_symbols
        self.symbols = 0
        self._bytes = 0

    def update(self, piece: str) -> None:
        if self.max_symbols is not None:
            piece = piece[:max(0, self.max_symbols - self.symbols)]
        if piece:
            self._bytes += len(self._comp.compress(piece.encode("utf-8")))
            self.symbols += len(piece)

    def compute(self) -> float | None:
        """Bits per symbol (None when nothing was fed); ends the stream."""
        if self._comp is not None:
            self._bytes += len(self._comp.flush())
            self._comp = None
        return 8.0 * self._bytes / self.symbols if self.symbols else None


def compression_bits_per_symbol(pieces: Iterable[str], max_symbols: int | None = None
                                ) -> tuple[float | None, int]:
    """One-shot ``LzmaRate`` over the concatenated pieces: ``(bits_per_symbol, symbols)``."""
    rate = LzmaRate(max_symbols)
    for piece in pieces:
        rate.update(piece)
    return rate.compute(), rate.symbols


# --------------------------------------------------------------------------- corpus stream
def _pieces(corpus: Any, split: str, char_counts: dict[str, int]) -> Iterator[str]:
    """Clean pieces of a split: N-free uppercase stretches (DNA) or document chunks (text).

    DNA: adds per-character counts (case kept, before N removal) to ``char_counts``.
    """
    from fmaudit import progress

    ivs = corpus.intervals(split)
    bar = progress.bar(total=sum(len(iv) for iv in ivs), desc=f"{corpus.name} {split}",
                       unit="char")
    for iv in ivs:
        carry = ""
        for s in range(iv.start, iv.end, READ_CHUNK):
            raw = corpus.read(iv.record, s, min(s + READ_CHUNK, iv.end), keep_case=True)
            bar.update(len(raw))
            if corpus.kind != "dna":
                yield raw
                continue
            for ch in set(raw):
                char_counts[ch] = char_counts.get(ch, 0) + raw.count(ch)
            # a stretch may continue into the next chunk: keep the last part as carry
            parts = _N_RUN.split(carry + raw.upper())
            carry = parts.pop()
            yield from (p for p in parts if p)
            if len(carry) > MAX_CARRY:
                yield carry[:MAX_CARRY]
                carry = carry[MAX_CARRY:]
        if carry:
            yield carry
    bar.close()


_ACGT_CODE = np.full(256, 255, dtype=np.uint8)
_ACGT_CODE[np.frombuffer(b"ACGT", dtype=np.uint8)] = np.arange(4, dtype=np.uint8)


def kmer_ids(piece: str, k: int) -> np.ndarray:
    """Ids of the non-overlapping k-mers of an uppercase ACGT string under ``kmer:k``
    (``5 + base-4 number`` of the k-mer with A=0 C=1 G=2 T=3, the tail shorter than k
    dropped): a vectorised shortcut that gives the tokenizer's own ids (checked in the tests).

    Raises:
        ValueError: a character other than A, C, G, T.
    """
    codes = _ACGT_CODE[np.frombuffer(piece.encode("ascii"), dtype=np.uint8)]
    if (codes == 255).any():
        raise ValueError("kmer_ids needs an uppercase ACGT string")
    usable = len(codes) - len(codes) % k
    weights = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    return len(SPECIAL_TOKENS) + codes[:usable].reshape(-1, k).astype(np.int64) @ weights


def _tokenize(tok: Any, pieces: Iterable[str], dna: bool = False
              ) -> Iterator[tuple[str, np.ndarray]]:
    """``(piece, ids)`` for each piece, without specials: batched through the fast backend
    (about 1 MiB of text per call), or ``kmer_ids`` for k-mer tokenizers on clean DNA."""
    from fmaudit.tokenizer import token_ids, tokenizer_spec_of

    spec = tokenizer_spec_of(tok) or ""
    if dna and spec.startswith("kmer:"):
        k = int(spec.split(":")[1])
        for piece in pieces:
            yield piece, kmer_ids(piece, k)
        return
    buf: list[str] = []
    chars = 0

    def flush() -> Iterator[tuple[str, np.ndarray]]:
        for text, row in zip(buf, token_ids(tok, buf), strict=True):
            yield text, np.asarray(row, dtype=np.int64)
        buf.clear()

    for piece in pieces:
        buf.append(piece)
        chars += len(piece)
        if chars >= TOKENIZE_BATCH_CHARS:
            yield from flush()
            chars = 0
    if buf:
        yield from flush()


def _cap(segments: list[np.ndarray], kept: int, seg: np.ndarray, limit: int) -> int:
    if kept < limit and len(seg):
        seg = seg[:limit - kept]
        segments.append(seg)
        kept += len(seg)
    return kept


def corpus_stats(corpus: Any, tok: Any = None, *, spec: str | None = None,
                 orders: Sequence[int] = ORDERS, max_context_tokens: int = 2_000_000,
                 max_eval_tokens: int = 1_000_000, max_compress_symbols: int = 4 * 2**20
                 ) -> dict[str, Any]:
    """Model-free statistics of a corpus, streamed in bounded memory.

    Args:
        corpus: a ``fmaudit.corpus.Corpus``.
        tok: a tokenizer; default: ``build_tokenizer(spec or kmer:6 (DNA) / bpe:4101 (text))``.
        max_context_tokens / max_eval_tokens: the context model is fit on the first this many
            train tokens and scored on the first this many held-out tokens (stream order).
        max_compress_symbols: LZMA runs over the first this many symbols (stream order; LZMA
            manages about 0.5-1 MB/s on DNA, so a genome is sampled, not compressed whole).

    Returns:
        a JSON-ready dict (see ``docs``: records, length, gc, n_fraction, tokens,
        unigram_entropy_bits/_normalized, unigram_cross_entropy_bits,
        context_cross_entropy_bits {"1","2","3"}, compression_bits_per_symbol, and what each
        was computed over). Statistics that do not apply (gc for text, held-out ones without
        a holdout) are None.

    Raises:
        FmauditError: the held-out split takes every selected contig (no train split).
    """
    from fmaudit.tokenizer import build_tokenizer, default_spec, tokenizer_spec_of

    if not corpus.length("train"):
        # refused as `fmaudit train` refuses it: held-out statistics need a train split
        raise FmauditError(f"--holdout {corpus.options.holdout}: leaves no training data in "
                           f"{corpus.path} (hold out less, or select more regions)")
    if tok is None:
        tok = build_tokenizer(spec or default_spec(corpus.kind), corpus)
    v = len(tok)
    dna = corpus.kind == "dna"
    has_holdout = corpus.length("holdout") > 0 and corpus.length("train") > 0
    splits = ("train", "holdout") if has_holdout else ("all",)
    chars: dict[str, int] = {}
    counts = {s: np.zeros(v, dtype=np.int64) for s in splits}
    ctx: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    kept = dict.fromkeys(splits, 0)
    limit = {"train": max_context_tokens, "holdout": max_eval_tokens, "all": 0}
    rate = LzmaRate(max_compress_symbols)
    for split in splits:
        for piece, ids in _tokenize(tok, _pieces(corpus, split, chars), dna=dna):
            rate.update(piece)
            counts[split] += np.bincount(ids, minlength=v)
            kept[split] = _cap(ctx[split], kept[split], ids, limit[split])
    total = sum(counts.values())
    n_tokens = int(total.sum())
    length = corpus.length("all")
    out: dict[str, Any] = {
        "name": corpus.name,
        "path": str(corpus.path.resolve()),
        "kind": corpus.kind,
        "fingerprint": corpus.fingerprint(),
        "holdout": corpus.options.holdout,
        "records": len(corpus.records),
        "length": length,
        "train_length": corpus.length("train"),
        "holdout_length": corpus.length("holdout"),
        "gc": None, "n_fraction": None, "lowercase_fraction": None,
        "tokenizer": tokenizer_spec_of(tok) or type(tok).__name__,
        "vocab_size": v,
        "tokens": n_tokens,
        "train_tokens": int(counts["train"].sum()) if has_holdout else None,
        "holdout_tokens": int(counts["holdout"].sum()) if has_holdout else None,
        "unk_fraction": (float(total[tok.unk_token_id]) / n_tokens
                         if n_tokens and tok.unk_token_id is not None else None),
        "unigram_entropy_bits": entropy_bits(total) if n_tokens else None,
        "unigram_entropy_normalized": (entropy_bits(total) / math.log2(v)) if n_tokens else None,
        "unigram_cross_entropy_bits": None,
        "unigram_smoothing": "add-one",
        "context_cross_entropy_bits": {str(k): None for k in orders},
        "context_smoothing": CONTEXT_SMOOTHING,
        "context_train_tokens": kept.get("train", 0),
        "context_eval_positions": 0,
        "compression_bits_per_symbol": rate.compute(),
        "compression": LzmaRate.method,
        "compression_symbols": rate.symbols,
        "symbol": "base (N-free stretches)" if dna else "character",
    }
    if dna and length:
        upper = {c: sum(n for ch, n in chars.items() if ch.upper() == c) for c in "ACGTN"}
        acgt = sum(upper[c] for c in "ACGT")
        out["gc"] = (upper["G"] + upper["C"]) / acgt if acgt else None
        out["n_fraction"] = upper["N"] / length
        out["lowercase_fraction"] = sum(n for ch, n in chars.items() if ch.islower()) / length
    if has_holdout and int(counts["holdout"].sum()):
        held = np.concatenate(ctx["holdout"]) if ctx["holdout"] else np.zeros(0, np.int64)
        if held.size:
            out["unigram_cross_entropy_bits"] = unigram_cross_entropy_bits(counts["train"], held, v)
        try:
            ce, positions = context_cross_entropy_bits(ctx["train"], ctx["holdout"], v, orders)
        except ValueError as exc:
            raise FmauditError(f"{corpus.path}: context statistics unavailable ({exc})") from None
        out["context_cross_entropy_bits"] = ce
        out["context_eval_positions"] = positions
    return out
