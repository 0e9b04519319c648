"""Per-member predictive metrics over predicted (masked or next-token) positions.

Inputs are ``logits [N, V]`` (any float dtype, any device) for N predicted positions over the
FULL vocabulary V (special tokens included: the model spends probability on them too) and
``labels [N]`` (long, the true token ids). All arithmetic is done in float64 from
``log_softmax``, so nothing underflows to ``log(0)``.

Per-position functions return float64 ``[N]`` tensors; :class:`PredictionAccumulator` streams
the same quantities as float64 sums and :func:`prediction_metrics` is its one-shot form. Both
use :func:`_prediction_update` / :func:`_prediction_compute`, so they cannot drift apart.
"""

from __future__ import annotations

import math

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

# Layout of the flat sums: [n, entropy, kl_uniform, nll_bits, correct, rank_1 .. rank_R].
_N, _ENTROPY, _KL, _NLL, _CORRECT, _RANKS = range(6)


class NonFiniteLogitsError(ValueError):
    """Logits contain NaN or inf (a diverged model or a broken forward pass)."""


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Validated float64 ``log_softmax(logits)`` of shape ``[N, V]``.

    Raises:
        ValueError: not a 2-D float tensor, or V < 2.
        NonFiniteLogitsError: NaN or inf in ``logits``.
    """
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor [N, V], got {tuple(logits.shape)} "
                         f"{logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need a vocabulary of at least 2, got V={logits.shape[1]}")
    if logits.device.type == "mps":  # no float64 on Apple GPUs
        logits = logits.cpu()
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise NonFiniteLogitsError(f"logits contain NaN or inf in {bad} of {logits.shape[0]} "
                                   "positions (the model diverged or its forward pass is broken)")
    return torch.log_softmax(logits.detach().to(torch.float64), dim=-1)


def _check_labels(labels: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor [{n}], got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
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


def _prediction_update(logits: torch.Tensor, labels: torch.Tensor, ranks: int) -> torch.Tensor:
    """The float64 CPU sums of one batch in the accumulator's layout (see ``_N`` .. ``_RANKS``)."""
    logp = _log_probs(logits)
    n, vocab = logp.shape
    labels = _check_labels(labels, n, vocab).to(logp.device)
    r = _n_ranks(ranks, vocab)
    out = torch.zeros(_RANKS + r, dtype=torch.float64, device=logp.device)
    if n == 0:
        return out.cpu()
    out[_N] = n
    out[_ENTROPY] = _entropy_bits_from_logp(logp).sum()
    out[_KL] = _kl_uniform_bits_from_logp(logp).sum()
    out[_NLL] = -logp.gather(1, labels[:, None]).sum() / LN2
    out[_CORRECT] = (logp.argmax(dim=-1) == labels).sum()
    out[_RANKS:] = logp.exp().topk(r, dim=-1).values.sum(dim=0)
    return out.cpu()  # one transfer per batch


def _prediction_compute(sums: torch.Tensor, vocab: int) -> dict:
    """Means from the sums: ``{positions, entropy_bits, entropy_normalized, kl_uniform_bits,
    cross_entropy_bits, perplexity, accuracy, ranks, rank_profile}`` (plain Python numbers)."""
    n = float(sums[_N])
    if n <= 0:
        raise EmptyAccumulatorError("no predicted positions were accumulated")
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

    Keeps float64 sums ``[n, sum H, sum KL(U||P), sum CE, #correct, sum p_(1) .. sum p_(R)]``,
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

        Raises:
            ValueError: ``V != vocab_size``, bad shapes or labels out of range.
            NonFiniteLogitsError: NaN/inf logits.
        """
        if logits.dim() == 2 and logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits cover {logits.shape[1]} tokens, the accumulator expects "
                             f"vocab_size={self.vocab_size}")
        self._sums += _prediction_update(logits, labels, self.ranks)

    def compute(self) -> dict:
        """Means over all accumulated positions (see :func:`prediction_metrics`).

        Raises:
            EmptyAccumulatorError: nothing accumulated.
        """
        return _prediction_compute(self._sums, self.vocab_size)


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
