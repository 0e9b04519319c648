"""Per-member predictive metrics over predicted (masked or next-token) positions.

Inputs are ``logits [N, V]`` (any float dtype, any device) for N predicted positions over the
FULL vocabulary V (special tokens included: the model spends probability on them too) and
``labels [N]`` (long, the true token ids). All arithmetic is done in float64 from
``log_softmax``, so nothing underflows to ``log(0)``.

Per-position functions return float64 ``[N]`` tensors; :class:`PredictionAccumulator` streams
the same quantities as float64 sums and :func:`prediction_metrics` is its one-shot form. Both
use :func:`_prediction_update` / :func:`_prediction_compute`, so they cannot drift apart.

The streaming path works on row chunks of about ``_CHUNK_ELEMENTS`` values, so its float64
temporaries stay in the CPU cache, and it never synchronises an accelerator: its sums stay on
the logits' device and NaN/inf logits there are counted and reported by ``compute()`` (on the CPU
``update`` raises at once).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fmaudit.metrics.base import EmptyAccumulatorError, SumAccumulator

__all__ = [
    "NonFiniteLogitsError",
    "PredictionAccumulator",
    "cross_entropy_bits",
    "entropy_bits",
    "kl_uniform_bits",
    "normalized_entropy",
    "prediction_metrics",
    "rank_profile",
    "top1_correct",
]

LN2 = math.log(2.0)

# Layout of the flat sums: [n, entropy, kl_uniform, nll_bits, correct, nonfinite,
# rank_1 .. rank_R]; ``nonfinite`` counts positions with NaN/inf logits (only ever non-zero on an
# accelerator, where update() cannot raise without waiting for the device).
_N, _ENTROPY, _KL, _NLL, _CORRECT, _NONFINITE, _RANKS = range(7)

# Values per internal row chunk: [chunk, V] float64 temporaries of 1 MiB stay in the CPU cache
# (bigger ones are fresh, page-faulting allocations); an accelerator prefers few large kernels.
_CHUNK_ELEMENTS = 1 << 17
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 22


class NonFiniteLogitsError(ValueError):
    """Logits contain NaN or inf (a diverged model or a broken forward pass)."""


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Validated float64 ``log_softmax(logits)`` of shape ``[N, V]``.

    Raises:
        ValueError: not a 2-D float tensor, or V < 2.
        NonFiniteLogitsError: NaN or inf in ``logits``.
    """
    logits = _check_logits_2d(logits)
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise NonFiniteLogitsError(f"logits contain NaN or inf in {bad} of {logits.shape[0]} "
                                   "positions (the model diverged or its forward pass is broken)")
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def _check_labels(labels: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """Shape/dtype check; the value range is checked only for CPU labels (on an accelerator
    that check would wait for the device; an out-of-range id fails there in ``gather``)."""
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor [{n}], got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    if n and labels.device.type == "cpu" and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(f"labels must lie in [0, {vocab}), got [{int(labels.min())}, "
                         f"{int(labels.max())}] (select predicted positions before calling)")
    return labels.long()


def _entropy_bits_from_logp(logp: torch.Tensor) -> torch.Tensor:
    # p * log p with p = exp(log p) > 0 for finite float64 logits; no 0 * -inf possible.
    return -(logp.exp() * logp).sum(dim=-1) / LN2


def _kl_uniform_bits_from_logp(logp: torch.Tensor) -> torch.Tensor:
    return -math.log2(logp.shape[-1]) - logp.mean(dim=-1) / LN2


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the predictive distribution, in bits.

    ``H_n = -sum_v p_nv log2 p_nv`` with ``p_n = softmax(logits_n)`` over all V tokens.

    Args:
        logits: float ``[N, V]``.

    Returns:
        float64 ``[N]``, each in ``[0, log2 V]``.

    Raises:
        NonFiniteLogitsError: NaN/inf logits. ValueError: bad shape.

    Example:
        >>> round(float(entropy_bits(torch.zeros(1, 8))[0]), 9)
        3.0
    """
    return _entropy_bits_from_logp(_log_probs(logits))


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H_n / log2 V`` (1 = uniform prediction), float64 ``[N]``.

    Raises as :func:`entropy_bits`.
    """
    return entropy_bits(logits) / math.log2(logits.shape[-1])


def kl_uniform_bits(logits: torch.Tensor) -> torch.Tensor:
    """KL divergence from the uniform distribution to the prediction, in bits (exact).

    ``KL(U || P_n) = sum_v (1/V) log2((1/V) / p_nv) = -log2 V - mean_v log2 p_nv``.
    It is 0 only for a uniform prediction and, unlike ``log2 V - H``, it weights every token
    equally, so it exposes tokens that get almost no probability.

    Args:
        logits: float ``[N, V]``.

    Returns:
        float64 ``[N]``, each ``>= 0`` (up to rounding).

    Raises:
        NonFiniteLogitsError: NaN/inf logits. ValueError: bad shape.
    """
    return _kl_uniform_bits_from_logp(_log_probs(logits))


def cross_entropy_bits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the true token, in bits: ``CE_n = -log2 p_n[label_n]``.

    Perplexity over a set of positions is ``2 ** mean_n CE_n`` (see :func:`prediction_metrics`).

    Args:
        logits: float ``[N, V]``. labels: integer ``[N]`` in ``[0, V)``.

    Returns:
        float64 ``[N]``.

    Raises:
        NonFiniteLogitsError: NaN/inf logits. ValueError: bad shapes or labels out of range.
    """
    logp = _log_probs(logits)
    labels = _check_labels(labels, logp.shape[0], logp.shape[1]).to(logp.device)
    return -logp.gather(1, labels[:, None])[:, 0] / LN2


def top1_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``argmax_v logits_nv == label_n`` as bool ``[N]`` (ties: the lowest token id wins).

    Raises:
        NonFiniteLogitsError: NaN/inf logits. ValueError: bad shapes or labels out of range.
    """
    logp = _log_probs(logits)
    labels = _check_labels(labels, logp.shape[0], logp.shape[1]).to(logp.device)
    return logp.argmax(dim=-1) == labels


def rank_profile(logits: torch.Tensor, ranks: int = 100) -> torch.Tensor:
    """Mean probability at ranks ``1..R`` (``R = min(ranks, V)``) of the sorted predictions.

    ``profile[r] = mean_n sort_desc(p_n)[r]``; a flat profile means near-uniform predictions.

    Args:
        logits: float ``[N, V]`` with ``N >= 1``. ranks: number of ranks kept (``>= 1``).

    Returns:
        float64 ``[R]``, non-increasing.

    Raises:
        NonFiniteLogitsError: NaN/inf logits. ValueError: bad shape, N = 0 or ranks < 1.
    """
    logp = _log_probs(logits)
    if logp.shape[0] == 0:
        raise ValueError("rank_profile needs at least one position")
    r = _n_ranks(ranks, logp.shape[1])
    return logp.exp().topk(r, dim=-1).values.mean(dim=0)


def _n_ranks(ranks: int, vocab: int) -> int:
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    return min(int(ranks), int(vocab))


def _check_logits_2d(logits: torch.Tensor) -> torch.Tensor:
    """Shape/dtype validation only (no pass over the values); MPS logits move to the CPU."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor [N, V], got {tuple(logits.shape)} "
                         f"{logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need a vocabulary of at least 2, got V={logits.shape[1]}")
    if logits.device.type == "mps":  # no float64 on Apple GPUs
        logits = logits.cpu()
    return logits.detach()


def _chunk_rows(logits: torch.Tensor) -> int:
    """Rows per internal chunk for ``[N, V]`` logits on their device."""
    budget = _CHUNK_ELEMENTS if logits.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    return max(1, budget // logits.shape[1])


class _Chunk:
    """float64 log-probabilities and probabilities of one row chunk of logits.

    ``finite`` (bool ``[n]``) is True for rows whose logits are all finite: the row sum of
    ``log_softmax`` is finite exactly then (NaN or +inf anywhere makes the whole row NaN, -inf
    makes that entry -inf), so one ``[n]`` test replaces a pass over ``[n, V]``.
    """

    __slots__ = ("finite", "logits", "logp", "logp_row_sum", "probs")

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits  # [n, V] as given (argmax / top-1 are taken on it)
        self.logp = torch.log_softmax(logits.to(torch.float64), dim=-1)  # [n, V]
        self.logp_row_sum = self.logp.sum(dim=-1)  # [n]
        self.finite = torch.isfinite(self.logp_row_sum)
        if self.logp.device.type == "cpu":  # numpy's vectorised exp is ~2x torch's on CPU
            self.probs = torch.from_numpy(np.exp(self.logp.numpy()))
        else:
            self.probs = self.logp.exp()

    def raise_if_nonfinite_on_cpu(self, full: torch.Tensor) -> None:
        """On the CPU, raise :class:`NonFiniteLogitsError` (counting over all of ``full``);
        on an accelerator do nothing (the caller counts ``~finite`` into its sums instead)."""
        if self.logits.device.type == "cpu" and not bool(self.finite.all()):
            bad = int((~torch.isfinite(full)).any(dim=1).sum())
            raise NonFiniteLogitsError(
                f"logits contain NaN or inf in {bad} of {full.shape[0]} positions (the model "
                "diverged or its forward pass is broken)")


def _top_values_sum(probs: torch.Tensor, r: int) -> torch.Tensor:
    """``sum_n sort_desc(probs_n)[:r]``, float64 ``[r]``: on the CPU a partition (selection,
    O(V)) and a sort of the r survivors instead of ``topk``; the same values either way."""
    vocab = probs.shape[1]
    if probs.device.type != "cpu":
        return probs.topk(r, dim=-1).values.sum(dim=0)
    top = np.partition(probs.numpy(), vocab - r, axis=1)[:, vocab - r :]  # [n, r] unordered
    top.sort(axis=1)
    return torch.from_numpy(top[:, ::-1].sum(axis=0))


def _prediction_update(logits: torch.Tensor, labels: torch.Tensor, ranks: int) -> torch.Tensor:
    """The float64 sums of one batch in the accumulator's layout (see ``_N`` .. ``_RANKS``), on
    the logits' device.

    Raises:
        ValueError: bad shapes or (CPU) labels out of range.
        NonFiniteLogitsError: NaN/inf in CPU logits (on an accelerator they are counted in the
            ``_NONFINITE`` slot instead).
    """
    logits = _check_logits_2d(logits)
    n, vocab = logits.shape
    labels = _check_labels(labels, n, vocab).to(logits.device)
    r = _n_ranks(ranks, vocab)
    out = torch.zeros(_RANKS + r, dtype=torch.float64, device=logits.device)
    if n == 0:
        return out
    out[_N].fill_(n)  # not out[_N] = n: that copies a host scalar (a CUDA sync)
    step = _chunk_rows(logits)
    for start in range(0, n, step):
        chunk = _Chunk(logits[start : start + step])
        chunk.raise_if_nonfinite_on_cpu(logits)
        lab = labels[start : start + step]
        logp, probs = chunk.logp, chunk.probs
        # H = -sum p ln p / ln 2 (p = exp(log p) > 0 for finite logits: no 0 * -inf);
        # one dot product over the whole chunk.
        out[_ENTROPY] -= torch.dot(probs.reshape(-1), logp.reshape(-1)) / LN2
        # KL(U || P) = -log2 V - mean_v log2 p_v, from the row sums already taken
        out[_KL] += -chunk.logp.shape[0] * math.log2(vocab) - chunk.logp_row_sum.sum() / (
            vocab * LN2)
        out[_NLL] -= logp.gather(1, lab[:, None]).sum() / LN2
        # argmax of the logits = argmax of log_softmax (a shift; ties: lowest id either way)
        out[_CORRECT] += (chunk.logits.argmax(dim=-1) == lab).sum()
        out[_NONFINITE] += (~chunk.finite).sum()
        out[_RANKS:] += _top_values_sum(probs, r)
    return out


def _prediction_compute(sums: torch.Tensor, vocab: int) -> dict:
    """Means from the sums: ``{positions, entropy_bits, entropy_normalized, kl_uniform_bits,
    cross_entropy_bits, perplexity, accuracy, ranks, rank_profile}`` (plain Python numbers).

    Raises:
        EmptyAccumulatorError: no position. NonFiniteLogitsError: NaN/inf logits were counted.
    """
    sums = sums.cpu()
    n = float(sums[_N])
    if n <= 0:
        raise EmptyAccumulatorError("no predicted positions were accumulated")
    nonfinite = round(float(sums[_NONFINITE]))
    if nonfinite:
        raise NonFiniteLogitsError(f"logits contained NaN or inf in {nonfinite} of {round(n)} "
                                   "positions (the model diverged or its forward pass is broken)")
    ce = float(sums[_NLL]) / n
    entropy = float(sums[_ENTROPY]) / n
    profile = (sums[_RANKS:] / n).tolist()
    return {
        "positions": round(n),
        "entropy_bits": entropy,
        "entropy_normalized": entropy / math.log2(vocab),
        "kl_uniform_bits": float(sums[_KL]) / n,
        "cross_entropy_bits": ce,
        "perplexity": 2.0**ce,  # perplexity of the mean CE, not the mean of perplexities
        "accuracy": float(sums[_CORRECT]) / n,
        "ranks": list(range(1, len(profile) + 1)),
        "rank_profile": profile,
    }


class PredictionAccumulator(SumAccumulator):
    """Streaming predictive metrics for one ensemble member.

    Keeps float64 sums ``[n, sum H, sum KL(U||P), sum CE, #correct, #non-finite, sum p_(1) ..
    sum p_(R)]``,
    so memory is independent of the number of positions and sums from several processes add
    up (``sums()`` / ``load_sums()`` / ``merge()``).

    Args:
        vocab_size: V, the full vocabulary the logits cover.
        ranks: ranks kept for the rank profile (``R = min(ranks, V)``).

    Example:
        >>> acc = PredictionAccumulator(vocab_size=8)
        >>> acc.update(torch.zeros(4, 8), torch.tensor([0, 1, 2, 3]))
        >>> round(acc.compute()["entropy_bits"], 9)
        3.0
    """

    def __init__(self, vocab_size: int, ranks: int = 100) -> None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.ranks = _n_ranks(ranks, vocab_size)
        super().__init__(_RANKS + self.ranks)

    def _config(self) -> dict:
        return {"vocab_size": self.vocab_size, "ranks": self.ranks}

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add ``logits [N, V]`` and ``labels [N]`` of N predicted positions.

        Never waits for an accelerator: the sums stay on the logits' device.

        Raises:
            ValueError: ``V != vocab_size``, bad shapes or (CPU) labels out of range.
            NonFiniteLogitsError: NaN/inf in CPU logits. On an accelerator such positions are
                counted instead and :meth:`compute` raises.
        """
        if logits.dim() == 2 and logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits cover {logits.shape[1]} tokens, the accumulator expects "
                             f"vocab_size={self.vocab_size}")
        self._add(_prediction_update(logits, labels, self.ranks))

    def compute(self) -> dict:
        """Means over all accumulated positions (see :func:`prediction_metrics`).

        Raises:
            EmptyAccumulatorError: nothing accumulated.
            NonFiniteLogitsError: NaN/inf logits were accumulated (accelerator updates).
        """
        return _prediction_compute(self._host_sums(), self.vocab_size)


def prediction_metrics(logits: torch.Tensor, labels: torch.Tensor, ranks: int = 100) -> dict:
    """All predictive metrics of one member over N positions, in one call.

    Returns ``{"positions", "entropy_bits", "entropy_normalized", "kl_uniform_bits",
    "cross_entropy_bits", "perplexity", "accuracy", "ranks", "rank_profile"}`` where every
    metric is the mean over positions of the per-position function of the same name,
    ``entropy_normalized = entropy_bits / log2 V`` and ``perplexity = 2 ** cross_entropy_bits``.

    Raises:
        NonFiniteLogitsError: NaN/inf logits.
        ValueError: bad shapes or labels. EmptyAccumulatorError: N = 0.
    """
    vocab = logits.shape[-1] if logits.dim() == 2 else 0
    return _prediction_compute(_prediction_update(logits, labels, ranks), vocab)
