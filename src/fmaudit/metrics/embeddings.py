"""Embedding geometry and how much of it two ensemble members share.

Static embeddings are matrices ``[n, d]`` whose rows are the same tokens in every member (the
caller removes special tokens and rows that are all zero in any member: :func:`usable_rows`).
Pairwise metrics compare member A with member B row by row:

* neighbourhoods: :func:`topk_overlap` (Jaccard of k-NN sets), :func:`local_spearman`,
  with the analytic chance level :func:`topk_overlap_chance`;
* global shape: :func:`procrustes` (as ``scipy.spatial.procrustes``), :func:`linear_cka`,
  :func:`rbf_cka`;
* calibration: :func:`row_permuted` destroys the row correspondence (the "null").

Single-matrix summaries: :func:`anisotropy`, :func:`effective_rank`.

The one-shot functions work on row chunks, so memory stays bounded for large n. To compare
many members pairwise, build one :class:`EmbeddingGeometry` per member (it caches the
per-member work: similarity matrix, k-NN lists, centred matrices, RBF Gram) and call
:func:`compare_embeddings` per pair; both paths use the same private helpers. Cosine
similarities are float32 (neighbour ranks do not need more); Procrustes and CKA are float64,
except the RBF squared distances, read from a float32 Gram (of centred rows when the rows
share a large offset: see :func:`_rbf_gram`).
A null partner (:meth:`EmbeddingGeometry.permuted`) reads its member's cached matrices through
the permutation instead of copying them.

Speed on CPU: ranks come from sorting integer keys that pack (float32 value, column) (numpy's
vectorised integer sort beats ``argsort`` and is stable by construction); k-NN lists select
with a partition before sorting; local Spearman uses the closed form for tie-free rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fmaudit.metrics.stats import mean_std_pairs, pair_indices

__all__ = [
    "STATIC_METRICS",
    "EmbeddingGeometry",
    "anisotropy",
    "compare_embeddings",
    "compare_members",
    "effective_rank",
    "knn_indices",
    "knn_jaccard",
    "linear_cka",
    "local_spearman",
    "procrustes",
    "rbf_cka",
    "row_permuted",
    "summarize_static",
    "topk_overlap",
    "topk_overlap_chance",
    "usable_rows",
    "valid_ks",
]

STATIC_METRICS = ("topk_overlap", "local_spearman", "procrustes", "linear_cka", "rbf_cka")

# Elements of one [rows, n] block (similarities, positions): 2^24 float32 = 64 MiB.
_BLOCK_ELEMENTS = 1 << 24


# -- validation and small helpers -------------------------------------------------------------
def _check_matrix(E: torch.Tensor, name: str = "E", min_rows: int = 2) -> torch.Tensor:
    if E.dim() != 2 or not E.is_floating_point():
        raise ValueError(f"{name} must be a float matrix [n, d], got {tuple(E.shape)} {E.dtype}")
    if E.shape[0] < min_rows or E.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} rows and 1 column, got "
                         f"{tuple(E.shape)}")
    if E.device.type == "mps":  # no float64 on Apple GPUs
        E = E.cpu()
    E = E.detach()
    if not bool(torch.isfinite(E).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return E


def _check_pair(A: torch.Tensor, B: torch.Tensor, same_dim: bool = False):
    A, B = _check_matrix(A, "A"), _check_matrix(B, "B")
    if A.shape[0] != B.shape[0] or (same_dim and A.shape[1] != B.shape[1]):
        raise ValueError(f"A and B must have the same {'shape' if same_dim else 'number of rows'}"
                         f", got {tuple(A.shape)} and {tuple(B.shape)}")
    return A, B.to(A.device)


def _check_k(k: int, n_rows: int) -> int:
    if not 1 <= int(k) < n_rows:
        raise ValueError(f"k={k} must satisfy 1 <= k < rows={n_rows} (see valid_ks)")
    return int(k)


def _rows_per_block(width: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(int(width), 1))


def _argsort_rows(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ascending argsort (order among equal values unspecified), LongTensor.

    On CPU numpy's vectorised sort is several times faster than ``torch.sort``.
    """
    if x.device.type == "cpu":
        return torch.from_numpy(np.argsort(x.numpy(), axis=1))
    return torch.argsort(x, dim=1)


def _ascending_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys ``[r, m]`` whose row-wise ascending order is the ascending order of the
    float32 ``values``, ties broken by column (lower first).

    The high 32 bits map each float to an unsigned integer with the same order (sign bit
    flipped for positives, all bits for negatives; -0.0 first becomes +0.0 so equal values get
    equal keys); the low 32 bits hold the column. numpy's vectorised integer sort of these keys
    is several times faster than ``argsort``, and stable by construction.
    """
    bits = np.add(values, np.float32(0.0), dtype=np.float32).view(np.int32)
    # signed order: non-negative floats keep their bits, negative ones flip the magnitude
    ordered = bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF))
    keys = np.empty(values.shape, dtype=np.uint64)
    np.add(ordered, np.int32(-(2**31)), out=keys.view(np.int64), dtype=np.int64, casting="unsafe")
    # the above is ordered + 2^31 as an unsigned 32-bit number, widened to 64 bits
    keys <<= np.uint64(32)
    keys |= np.arange(values.shape[1], dtype=np.uint64)
    return keys


# index of the low / high 32-bit word of a uint64 viewed as two uint32
_LOW_WORD = 0 if np.little_endian else 1


def _key_words(keys: np.ndarray, high: bool = False) -> np.ndarray:
    """The low (column) or high (value) 32 bits of :func:`_ascending_keys` output, as a
    uint32 VIEW (no copy; the last axis of ``keys`` must be contiguous)."""
    word = 1 - _LOW_WORD if high else _LOW_WORD
    return keys.view(np.uint32)[..., word::2]


def _key_columns(keys: np.ndarray) -> np.ndarray:
    """The column indices (low 32 bits) of :func:`_ascending_keys` output, int64."""
    return _key_words(keys).astype(np.int64)


def _topk_rows(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of each row, largest first, LongTensor ``[r, k]``
    (on CPU, among equal values the lower index comes first, as a stable sort).

    On CPU, per block of rows: a partition selects the k largest (O(n)), then only those are
    sorted (integer keys, :func:`_ascending_keys`); rows where a run of equal values straddles
    the k-th place are sorted whole, so the choice among them is the stable one too.
    """
    if sim.device.type != "cpu":
        return sim.topk(k, dim=1).indices
    r, n = sim.shape
    out = torch.empty(r, k, dtype=torch.long)
    step = max(1, (1 << 20) // n)  # the partition's int64 output stays ~8 MiB
    for start in range(0, r, step):
        block = sim[start : start + step]
        x = block.numpy()
        if k < n:
            cand = torch.from_numpy(np.argpartition(x, n - k, axis=1)[:, n - k :])
            values = block.gather(1, cand).numpy()
            low = values.min(axis=1, keepdims=True)  # the k-th largest value
            straddle = np.flatnonzero(
                (x == low).sum(axis=1) > (values == low).sum(axis=1))
            if straddle.size:  # equal values cut by the partition: take whole rows
                keys = _ascending_keys(-x[straddle])
                keys.sort(axis=1)
                cand[straddle] = torch.from_numpy(_key_columns(keys[:, :k]))
                values[straddle] = np.take_along_axis(x[straddle], cand[straddle].numpy(), 1)
        else:
            cand, values = torch.arange(n).expand(block.shape[0], n), x
        keys = _ascending_keys(-values)  # ascending in -value: largest first
        # among equal values order by token index, not by position among the candidates
        keys &= ~np.uint64(0xFFFFFFFF)
        keys |= cand.numpy().astype(np.uint64)
        keys.sort(axis=1)
        out[start : start + step] = torch.from_numpy(_key_columns(keys))
    return out


def _sorted_values(x: torch.Tensor) -> torch.Tensor:
    """All values of ``x`` in ascending order, 1-D."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=None))
    return torch.sort(x.flatten()).values


def valid_ks(ks: Iterable[int], n_rows: int) -> list[int]:
    """The ``k`` that can be computed on ``n_rows`` rows: ``1 <= k < n_rows``, order kept.

    A k at or above the number of compared rows is meaningless (every row has only
    ``n_rows - 1`` others), so it is left out rather than reported.
    """
    return [int(k) for k in ks if 1 <= int(k) < n_rows]


def usable_rows(
    members: torch.Tensor | Sequence[torch.Tensor], special_ids: Iterable[int] = ()
) -> torch.Tensor:
    """Indices of the rows every member can be compared on.

    A row is usable when it is not a special token and is not all zero in ANY member (an
    all-zero row is a token that never received a gradient; its cosine is undefined).

    Args:
        members: one matrix ``[V, d]`` or a sequence of them (same V; d may differ).
        special_ids: token ids to exclude.

    Returns:
        LongTensor ``[n]`` of row indices, ascending.

    Raises:
        ValueError: matrices with different numbers of rows, or an id outside ``[0, V)``.
    """
    mats = [members] if isinstance(members, torch.Tensor) else list(members)
    if not mats:
        raise ValueError("usable_rows needs at least one matrix")
    rows = {m.shape[0] for m in mats}
    if len(rows) != 1 or any(m.dim() != 2 for m in mats):
        raise ValueError(f"members must be [V, d] matrices with one V, got "
                         f"{[tuple(m.shape) for m in mats]}")
    vocab = rows.pop()
    keep = torch.ones(vocab, dtype=torch.bool)
    for m in mats:
        keep &= (m.detach().cpu() != 0).any(dim=1)
    for i in special_ids:
        if not 0 <= int(i) < vocab:
            raise ValueError(f"special token id {i} is outside [0, {vocab})")
        keep[int(i)] = False
    return keep.nonzero().flatten()


def row_permuted(B: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``B`` with its rows in a random order (``B[perm]``): the null that breaks the row
    correspondence while keeping B's own geometry. Deterministic for a seeded generator."""
    perm = torch.randperm(B.shape[0], generator=generator)
    return B[perm.to(B.device)]


# -- neighbourhoods ---------------------------------------------------------------------------
class _Rows(NamedTuple):
    """float32 rows and their inverse norms: the inputs of every cosine similarity."""

    x: torch.Tensor  # float32 [n, d]
    inv_norm: torch.Tensor  # float32 [n]; 0-safe: an all-zero row gets similarity 0


def _rows(E: torch.Tensor) -> _Rows:
    x = E.float()  # float32 is plenty to rank neighbours
    return _Rows(x, 1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12))


def _gram_rows(rows: _Rows, start: int, stop: int) -> torch.Tensor:
    """Raw inner products ``x_i . x_j`` of rows ``start:stop`` with all rows, float32 ``[c, n]``."""
    return rows.x[start:stop] @ rows.x.T


def _similarity_from_gram(gram: torch.Tensor, rows: _Rows, start: int) -> torch.Tensor:
    """Cosine similarities from raw inner products of rows ``start:start+c``, float32
    ``[c, n]`` (a new tensor); a row's similarity to itself is -inf so it is never its own
    neighbour."""
    stop = start + gram.shape[0]
    sim = gram * rows.inv_norm[start:stop, None] * rows.inv_norm[None, :]
    local = torch.arange(stop - start, device=sim.device)
    sim[local, local + start] = -math.inf
    return sim


def _similarity_rows(rows: _Rows, start: int, stop: int) -> torch.Tensor:
    """Cosine similarities of rows ``start:stop`` to all rows (diagonal -inf), float32."""
    return _similarity_from_gram(_gram_rows(rows, start, stop), rows, start)


def _full_gram(rows: _Rows) -> torch.Tensor:
    """Raw Gram ``X X^T``, float32 ``[n, n]``, built in the same row blocks as the one-shot
    similarities so both paths produce identical numbers."""
    n = rows.x.shape[0]
    gram = torch.empty(n, n, dtype=torch.float32, device=rows.x.device)
    step = _rows_per_block(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        gram[start:stop] = _gram_rows(rows, start, stop)
    return gram


def knn_indices(E: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest OTHER rows of every row by cosine similarity.

    ``knn[i] = argtopk_{j != i} cos(E_i, E_j)`` in descending similarity; the row itself is
    excluded by setting the diagonal to -inf (not by dropping the first hit, which would be
    wrong for duplicate rows). Computed in row blocks, memory ``O(block * n)``.

    Args:
        E: float ``[n, d]``. k: ``1 <= k < n``.

    Returns:
        LongTensor ``[n, k]``.

    Raises:
        ValueError: bad matrix or k.
    """
    E = _check_matrix(E)
    n = E.shape[0]
    k = _check_k(k, n)
    rows = _rows(E)
    out = torch.empty(n, k, dtype=torch.long, device=E.device)
    step = _rows_per_block(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = _topk_rows(_similarity_rows(rows, start, stop), k)
    return out


def knn_jaccard(idx_a: torch.Tensor, idx_b: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Mean Jaccard overlap of two k-NN lists for several k at once.

    ``J_k = mean_i |N_A^k(i) ∩ N_B^k(i)| / |N_A^k(i) ∪ N_B^k(i)| = mean_i x_i / (2k - x_i)``
    with ``N^k(i)`` the first k entries of row i of a list sorted by similarity (as
    :func:`knn_indices` returns) and ``x_i`` the intersection size.

    Args:
        idx_a, idx_b: LongTensor ``[n, K]`` (widths may differ), each at least ``max(ks)`` wide.
        ks: the k to evaluate.

    Returns:
        ``{k: J_k}``.

    Raises:
        ValueError: different n, or a k wider than a list.
    """
    if idx_a.dim() != 2 or idx_b.dim() != 2 or idx_a.shape[0] != idx_b.shape[0]:
        raise ValueError(f"k-NN lists must be [n, K] with one n, got {tuple(idx_a.shape)} and "
                         f"{tuple(idx_b.shape)}")
    ks = [int(k) for k in ks]
    if not ks:
        return {}
    kmax = max(ks)
    if min(ks) < 1 or kmax > min(idx_a.shape[1], idx_b.shape[1]):
        raise ValueError(f"ks {ks} must lie in [1, {min(idx_a.shape[1], idx_b.shape[1])}]")
    n = idx_a.shape[0]
    idx_b = idx_b.to(idx_a.device)
    totals = torch.zeros(len(ks), dtype=torch.float64)
    dtype = torch.int16 if kmax < 2**15 else torch.int32  # half the memory traffic
    ranks = torch.arange(kmax, dtype=dtype, device=idx_a.device)
    step = _rows_per_block(n)
    # pos[r, j] = rank of j in A's list of row r (kmax = absent); filled once, and only the
    # scattered entries are reset after each block
    buffer = torch.full((min(step, n), n), kmax, dtype=dtype, device=idx_a.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        pos, cols = buffer[: stop - start], idx_a[start:stop, :kmax]
        pos.scatter_(1, cols, ranks.expand(stop - start, kmax))
        pos_of_b = pos.gather(1, idx_b[start:stop, :kmax])  # [c, kmax]
        pos.scatter_(1, cols, kmax)
        for t, k in enumerate(ks):
            inter = (pos_of_b[:, :k] < k).sum(dim=1).double()
            totals[t] += (inter / (2 * k - inter)).sum().cpu()
    return {k: float(totals[t]) / n for t, k in enumerate(ks)}


def topk_overlap(A: torch.Tensor, B: torch.Tensor, k: int) -> float:
    """Mean Jaccard overlap of the k-NN sets of each row in A and in B (cosine similarity).

    ``J = mean_i |N_A(i) ∩ N_B(i)| / |N_A(i) ∪ N_B(i)|``, ``N_X(i)`` = :func:`knn_indices`.
    1 for identical (or rotated, or rescaled) matrices; about :func:`topk_overlap_chance`
    for unrelated ones.

    Args:
        A, B: float ``[n, d_A]``, ``[n, d_B]`` with rows in correspondence. k: ``1 <= k < n``.

    Raises:
        ValueError: bad matrices or k.

    Example:
        >>> E = torch.randn(50, 8)
        >>> topk_overlap(E, 2 * E, 5)
        1.0
    """
    A, B = _check_pair(A, B)
    return knn_jaccard(knn_indices(A, k), knn_indices(B, k), [k])[k]


def topk_overlap_chance(n_rows: int, k: int) -> float:
    """Expected Jaccard of two independent uniform random k-subsets of the ``n_rows - 1``
    other rows (the overlap of unrelated embeddings).

    With ``M = n_rows - 1`` and intersection size ``X ~ Hypergeom(M, k, k)``:
    ``E[J] = sum_x P(X = x) x / (2k - x)``,
    ``P(X = x) = C(k, x) C(M - k, k - x) / C(M, k)``, evaluated with ``lgamma`` (stable for
    n = 4096, k = 1000).

    Raises:
        ValueError: unless ``1 <= k < n_rows``.
    """
    k = _check_k(k, n_rows)
    m = int(n_rows) - 1

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    log_total = log_comb(m, k)
    terms = [
        math.exp(log_comb(k, x) + log_comb(m - k, k - x) - log_total) * x / (2 * k - x)
        for x in range(max(1, 2 * k - m), k + 1)  # x = 0 contributes 0
    ]
    return math.fsum(terms)


def _average_ranks_sorted(v: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """Ranks (0 = smallest value) of rows that are already sorted, float64 ``[r, k]``.

    Tied values get the mean of their positions, as scipy's ``rankdata(method="average") - 1``.
    ``descending=True`` for rows sorted from the largest value down.
    """
    r, k = v.shape
    starts = torch.ones_like(v, dtype=torch.bool)  # True where a run of equal values begins
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    pos = torch.arange(k, device=v.device, dtype=torch.float64).expand(r, k).clone()
    tied = ~starts.all(dim=1)
    if bool(tied.any()):  # only rows with ties pay for run averaging
        st = starts[tied]
        ends = torch.ones_like(st)
        ends[:, :-1] = st[:, 1:]
        sub = pos[tied]
        first = torch.where(st, sub, 0.0).cummax(dim=1).values
        last = torch.where(ends, sub, float(k)).flip(1).cummin(dim=1).values.flip(1)
        pos[tied] = (first + last) / 2
    return (k - 1) - pos if descending else pos


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise average ranks (ties share their mean rank), float64 ``[r, k]``."""
    order = _argsort_rows(x)
    return torch.empty(x.shape, dtype=torch.float64, device=x.device).scatter_(
        1, order, _average_ranks_sorted(x.gather(1, order))
    )


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation, float64 ``[r]``; NaN where a row has zero variance."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = ((a * a).sum(dim=1) * (b * b).sum(dim=1)).sqrt()
    cov = (a * b).sum(dim=1)
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), math.nan)


def _side_spearman(own: torch.Tensor, other: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Row-wise Spearman correlation of ``own[:, :k]`` and ``other[:, :k]`` for every k,
    float64 ``[c, len(ks)]`` (NaN where a row has no rank variance).

    ``own`` must be sorted descending in every row (a neighbour list in similarity order), so
    its ranks need no sort. Rows without ties in either prefix take the closed form for two
    permutations of ``0..k-1``: ``rho = (sum_j r_j s_j - k mu^2) / (k (k^2 - 1) / 12)``,
    ``mu = (k - 1) / 2``, where ``sum_j r_j s_j = sum_m m (k - 1 - col(m))`` with ``col(m)`` the
    column of the m-th smallest ``other`` value (one integer-key sort per k, exact integer
    sums); rows with ties take average ranks and Pearson, as ``scipy.stats.spearmanr``.
    """
    c, width = own.shape
    out = torch.empty(c, len(ks), dtype=torch.float64)
    if c == 0:
        return out
    own_np = own.numpy()
    equal_next = own_np[:, 1:] == own_np[:, :-1]  # [c, K - 1], descending: ties are adjacent
    first_tie = np.where(equal_next.any(axis=1), equal_next.argmax(axis=1), width)
    other_keys = _ascending_keys(other.numpy())  # columns 0..K-1 in the low bits
    for t, k in enumerate(ks):
        last = t == len(ks) - 1
        # the last k may sort the keys in place (nothing reads them after it)
        keys = other_keys if last and k == width else other_keys[:, :k].copy()
        keys.sort(axis=1)
        high = _key_words(keys, high=True)  # views, no copies
        tied = (high[:, 1:] == high[:, :-1]).any(axis=1) | (first_tie <= k - 2)
        # sum_m m * own_rank(col(m)), own_rank(j) = k - 1 - j (descending own values), as
        # (k - 1) sum_m m - sum_m m col(m): integers below 2^53, exact in float64
        m_sum = k * (k - 1) / 2.0
        cross = (k - 1) * m_sum - _key_words(keys).astype(np.float64) @ np.arange(
            k, dtype=np.float64)
        mu = (k - 1) / 2.0
        rho = torch.from_numpy((cross - k * mu * mu) / (k * (k * k - 1) / 12.0))
        rows = np.flatnonzero(tied)
        if rows.size:  # average ranks, both taken in the sorted order of `other`
            sorted_keys = keys[rows]
            own_ranks = _average_ranks_sorted(own[rows, :k], descending=True)
            own_at = own_ranks.gather(1, torch.from_numpy(_key_columns(sorted_keys)))
            other_ranks = _average_ranks_sorted(torch.from_numpy(
                (sorted_keys >> np.uint64(32)).astype(np.int64)))
            rho[torch.from_numpy(rows)] = _pearson_rows(own_at, other_ranks)
        out[:, t] = rho
    return out


def _spearman_totals(rho_a: torch.Tensor, rho_b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per k: the sum and count of ``(rho_a + rho_b) / 2`` over rows where both are defined."""
    rho = (0.5 * (rho_a + rho_b)).numpy()
    ok = ~np.isnan(rho)
    return np.where(ok, rho, 0.0).sum(axis=0), ok.sum(axis=0)


def _nanmean(total: float, count: int) -> float:
    return total / count if count else math.nan


def local_spearman(A: torch.Tensor, B: torch.Tensor, k: int) -> float:
    """Agreement of the similarity ORDER within each row's neighbourhood.

    For row i and A's k nearest neighbours ``N_A(i)``:
    ``rho_A(i) = spearman(cos_A(i, N_A(i)), cos_B(i, N_A(i)))``; likewise ``rho_B(i)`` over
    ``N_B(i)``; ``rho(i) = (rho_A(i) + rho_B(i)) / 2``; the result is the mean of ``rho(i)``
    over rows. Spearman = Pearson correlation of average ranks (as ``scipy.stats.spearmanr``,
    ties included). A row whose similarities are all tied in either neighbourhood has no
    defined correlation and is EXCLUDED from the mean (NaN-mean); if every row is excluded the
    result is NaN (``stats.finite_or_none`` turns it into null).

    Args:
        A, B: float ``[n, d_A]``, ``[n, d_B]`` with rows in correspondence. k: ``2 <= k < n``.

    Raises:
        ValueError: bad matrices or k (k = 1 has no rank correlation).
    """
    A, B = _check_pair(A, B)
    n = A.shape[0]
    k = _check_k(k, n)
    if k < 2:
        raise ValueError("local_spearman needs k >= 2")
    ra, rb = _rows(A), _rows(B)
    total, count = 0.0, 0
    step = _rows_per_block(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        sa, sb = _similarity_rows(ra, start, stop), _similarity_rows(rb, start, stop)
        knn_a, knn_b = _topk_rows(sa, k), _topk_rows(sb, k)
        rho_a = _side_spearman(sa.gather(1, knn_a), sb.gather(1, knn_a), [k])
        rho_b = _side_spearman(sb.gather(1, knn_b), sa.gather(1, knn_b), [k])
        block_total, block_count = _spearman_totals(rho_a, rho_b)
        total += float(block_total[0])
        count += int(block_count[0])
    return _nanmean(total, count)


# -- global shape: Procrustes and CKA ---------------------------------------------------------
def _centred_unit(E: torch.Tensor, name: str) -> torch.Tensor:
    """Column-centred float64 matrix scaled to unit Frobenius norm (scipy's procrustes step).

    Raises:
        ValueError: all rows identical (nothing left after centring).
    """
    x = E.double()
    x = x - x.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(x)
    if not float(norm) > 0:
        raise ValueError(f"{name}: all rows are identical, its shape is undefined")
    return x / norm


def _procrustes_units(ua: torch.Tensor, ub: torch.Tensor, cross: torch.Tensor):
    """``(disparity, mean_row_cosine)`` from centred unit matrices and ``cross = ua^T ub``."""
    u, w, vt = torch.linalg.svd(cross)
    rotation = u @ vt  # orthogonal [d, d]
    scale = w.sum()
    # scipy aligns mtx2 -> scale * mtx2 @ R.T and sums squared differences; with unit-norm
    # inputs and tr(ua^T ub R^T) = sum(w) = scale that sum is ||ua||^2 + scale^2 ||ub||^2
    # - 2 scale^2, so no pass over the aligned matrix is needed for it.
    sq_a = torch.dot(ua.reshape(-1), ua.reshape(-1))  # one BLAS pass, no [n, d] temporary
    sq_b = torch.dot(ub.reshape(-1), ub.reshape(-1))
    disparity = max(0.0, float(sq_a + scale**2 * sq_b - 2.0 * scale**2))
    # the cosine does not need a float64 product (float32: ~1e-7 relative)
    aligned = ub.float() @ rotation.T.float()
    cosine = float(F.cosine_similarity(ua.float(), aligned, dim=1, eps=1e-30).double().mean())
    return disparity, cosine


def procrustes(A: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
    """Orthogonal Procrustes comparison, as ``scipy.spatial.procrustes(A, B)``.

    Both matrices are column-centred and scaled to unit Frobenius norm (``A'``, ``B'``); with
    ``U S V^T = svd(A'^T B')``, ``R = U V^T`` and ``s = sum(S)``, B is aligned as
    ``B'' = s B' R^T`` and

    * ``disparity = sum_ij (A' - B'')_ij^2 = 1 - s^2`` in ``[0, 1]`` (0 = same shape up to
      rotation, reflection, translation and scale);
    * ``mean_row_cosine = mean_i cos(A'_i, B''_i)``.

    Args:
        A, B: float ``[n, d]`` of the same shape, rows in correspondence.

    Returns:
        ``(disparity, mean_row_cosine)``.

    Raises:
        ValueError: shapes differ, or a matrix has all rows identical.
    """
    A, B = _check_pair(A, B, same_dim=True)
    ua, ub = _centred_unit(A, "A"), _centred_unit(B, "B")
    return _procrustes_units(ua, ub, ua.T @ ub)


def _linear_cka_units(
    cross: torch.Tensor, self_a: torch.Tensor | float, self_b: torch.Tensor | float
) -> float:
    return float(torch.linalg.matrix_norm(cross) ** 2 / (self_a * self_b))


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019).

    After centring the columns of X ``[n, d_X]`` and Y ``[n, d_Y]``:
    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` in ``[0, 1]`` (float64), equal to
    ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels ``K = X X^T``.
    Invariant to orthogonal transforms and isotropic scaling of either matrix.

    Raises:
        ValueError: different n, or a matrix with all rows identical.
    """
    X, Y = _check_pair(X, Y)
    ux, uy = _centred_unit(X, "X"), _centred_unit(Y, "Y")
    return _linear_cka_units(
        ux.T @ uy, torch.linalg.matrix_norm(ux.T @ ux), torch.linalg.matrix_norm(uy.T @ uy)
    )


def _median_pair_distance(d2: torch.Tensor) -> float:
    """numpy-style median (mean of the two middle values for an even count) of the pairwise
    distances ``sqrt(d2_ij)``, ``i < j``, of a symmetric ``[n, n]`` matrix with zero diagonal.

    ``sqrt`` is monotone, so order statistics of d2 are taken. Instead of copying out the upper
    triangle, all entries are ranked: each pair appears twice and the n diagonal zeros come
    first, so the k-th smallest pair value (1-based) is entry ``n + 2k - 1`` (0-based) of the
    sorted entries. On CPU two single-place partitions (O(n^2), numpy's SIMD selection; one
    partition with two places falls back to a slow path) replace the full sort: the second
    order statistic is the ``(i_hi - i_lo)``-th smallest of what lies above the first.
    """
    n = d2.shape[0]
    m = n * (n - 1) // 2
    i_lo = n + 2 * ((m + 1) // 2) - 1
    i_hi = i_lo if m % 2 else n + 2 * (m // 2 + 1) - 1
    if d2.device.type == "cpu":
        values = np.partition(d2.numpy().reshape(-1), i_lo)
        lo = float(values[i_lo])
        rest = i_hi - i_lo - 1  # 0-based place of the upper value within values[i_lo + 1:]
        hi = lo if i_hi == i_lo else float(np.partition(values[i_lo + 1 :], rest)[rest])
    else:
        values = _sorted_values(d2).cpu()
        lo, hi = float(values[i_lo]), float(values[i_hi])
    return 0.5 * (math.sqrt(lo) + math.sqrt(hi))


def _rbf_gram(E: torch.Tensor, raw_gram: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The float32 Gram the RBF distances are read from: ``raw_gram()`` (``X X^T``, shared
    with the cosine similarities) unless the rows share an offset larger than their spread,
    ``|mean|^2 > mean_i |x_i - mean|^2``. ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` then cancels in
    float32 (at an offset 1e4 times the spread nothing is left), so the rows are centred
    first, in float64, which leaves every distance as it is, and get a Gram of their own."""
    x = E.double()
    mean = x.mean(dim=0)
    centred = x - mean
    if float(mean @ mean) <= float((centred * centred).sum(dim=1).mean()):
        return raw_gram()
    return _full_gram(_rows(centred))


def _rbf_centred_gram(gram: torch.Tensor, sigma_rule: float) -> tuple[torch.Tensor, float]:
    """``(H K H, sigma)`` for the RBF kernel of the rows behind a raw float32 Gram ``X X^T``
    (shared with the cosine similarities: one ``n^2 d`` product per member); float64
    ``[n, n]``. ``gram`` is not modified. See :func:`rbf_cka`."""
    if not sigma_rule > 0:
        raise ValueError(f"sigma_rule must be > 0, got {sigma_rule}")
    sq = gram.diagonal().clone()
    # ||x_i - x_j||^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j
    d2 = (gram * -2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_min_(0.0)
    # exactly symmetric (BLAS need not be), so pairs count twice; numpy reads the transpose
    # faster than torch on CPU (the same IEEE operations either way)
    if d2.device.type == "cpu":
        both = np.add(d2.numpy(), d2.numpy().T)
        d2 = torch.from_numpy(np.multiply(both, np.float32(0.5), out=both))
    else:
        d2 = (d2 + d2.T).mul_(0.5)
    d2.fill_diagonal_(0.0)
    sigma = sigma_rule * _median_pair_distance(d2)
    if not sigma > 0:
        raise ValueError("RBF bandwidth is 0: more than half of the row pairs coincide")
    # K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)), float64 from here on (torch's in-place exp is
    # vectorised and uses every core: ~4x numpy's on CPU)
    kernel = d2.to(torch.float64).mul_(-0.5 / sigma**2).exp_()
    del d2
    row_means = kernel.mean(dim=1, keepdim=True)  # K symmetric: column means = row means
    kernel.sub_(row_means).sub_(row_means.T).add_(row_means.mean())
    return kernel, sigma


def _frobenius_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum_ij a_ij b_ij`` for float64 matrices (one BLAS dot)."""
    return float(torch.dot(a.reshape(-1), b.to(a.device).reshape(-1)))


def rbf_cka(X: torch.Tensor, Y: torch.Tensor, sigma_rule: float = 0.5) -> float:
    """RBF-kernel centred kernel alignment (Kornblith et al. 2019).

    ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma_X^2))`` with bandwidth
    ``sigma_X = sigma_rule * median_{i<j} ||x_i - x_j||`` (each matrix its own bandwidth),
    likewise L for Y; with ``H = I - 11^T / n``:
    ``CKA = tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` in ``[0, 1]`` (float64; the ``1/(n-1)^2``
    of the HSIC estimator cancels). Memory ``O(n^2)``: fine for n up to a few thousand.

    Raises:
        ValueError: different n, sigma_rule <= 0, or a zero bandwidth (coinciding rows).
    """
    X, Y = _check_pair(X, Y)
    kx, _ = _rbf_centred_gram(_rbf_gram(X, lambda: _full_gram(_rows(X))), sigma_rule)
    ky, _ = _rbf_centred_gram(_rbf_gram(Y, lambda: _full_gram(_rows(Y))), sigma_rule)
    return _frobenius_dot(kx, ky) / math.sqrt(_frobenius_dot(kx, kx) * _frobenius_dot(ky, ky))


# -- single-matrix summaries ------------------------------------------------------------------
def anisotropy(H: torch.Tensor) -> float:
    """Norm of the mean direction: ``|| mean_i h_i / ||h_i|| ||_2`` in ``[0, 1]``.

    ~``1/sqrt(n)`` for isotropic random vectors, ~1 when all vectors share a direction.
    All-zero rows count as zero vectors (remove them first).

    Raises:
        ValueError: not a float matrix with at least one row, or non-finite values.
    """
    H = _check_matrix(H, "H", min_rows=1)
    return float(torch.linalg.vector_norm(F.normalize(H.double(), dim=1).mean(dim=0)))


def effective_rank(H: torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(-sum_i p_i ln p_i)``, ``p_i = s_i / sum_j s_j``
    with ``s`` the singular values of H (not centred), ``0 ln 0 = 0``.

    Equals r for a matrix with r equal non-zero singular values; between 1 and ``min(n, d)``.

    Raises:
        ValueError: not a float matrix, non-finite values, or H = 0.
    """
    H = _check_matrix(H, "H", min_rows=1)
    s = torch.linalg.svdvals(H.double())
    total = s.sum()
    if not float(total) > 0:
        raise ValueError("H is all zero: its effective rank is undefined")
    p = s / total
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


# -- many members: cached per-member work -----------------------------------------------------
class _cached:
    """``functools.cached_property`` without Python 3.11's lock, which is shared by every
    instance and would serialise members prepared on different threads (3.12 dropped it)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.name not in obj.__dict__:  # a non-data descriptor: later reads hit the dict
            obj.__dict__[self.name] = self.fn(obj)
        return obj.__dict__[self.name]


class EmbeddingGeometry:
    """One member's static embedding matrix ``[n, d]`` with its per-member work cached.

    Everything is computed lazily, once: the cosine similarity matrix (float32 ``n x n``,
    diagonal -inf), the k-NN lists and the similarities to them, the centred unit-norm float64
    matrix for Procrustes/linear CKA and the centred RBF Gram (float64 ``n x n``). For n = 4101
    that is about 230 MB per member (67 MB similarities, 135 MB Gram); drop the object to free
    it. :meth:`permuted` partners read through a permutation instead of copying those.

    Args:
        E: float ``[n, d]`` (rows already restricted with :func:`usable_rows`).
        sigma_rule: RBF bandwidth factor (see :func:`rbf_cka`).
    """

    def __init__(self, E: torch.Tensor, sigma_rule: float = 0.5) -> None:
        self.matrix = _check_matrix(E, "embeddings")
        self.n_rows, self.dim = self.matrix.shape
        self.sigma_rule = float(sigma_rule)
        self._knn: torch.Tensor | None = None
        self._neighbour_sim: torch.Tensor | None = None
        # a permuted partner: row i is row perm[i] of `_source` (see permuted())
        self._source: EmbeddingGeometry | None = None
        self._perm: torch.Tensor | None = None
        self._inverse: torch.Tensor | None = None

    @_cached
    def _row_data(self) -> _Rows:
        return _rows(self.matrix)

    @_cached
    def _gram(self) -> torch.Tensor:
        """Raw float32 Gram, shared by :attr:`similarity` and :attr:`rbf`; dropped once both
        exist."""
        return _full_gram(self._row_data)

    def _drop_gram_when_done(self) -> None:
        if "similarity" in self.__dict__ and "rbf" in self.__dict__:
            self.__dict__.pop("_gram", None)

    @_cached
    def similarity(self) -> torch.Tensor:
        """float32 ``[n, n]`` cosine similarities, diagonal -inf."""
        if self._source is not None:  # materialised only when asked for directly
            perm = self._perm
            return self._source.similarity[perm][:, perm]
        gram, rows = self._gram, self._row_data
        n = self.n_rows
        sim = torch.empty(n, n, dtype=torch.float32, device=gram.device)
        step = _rows_per_block(n)
        for start in range(0, n, step):
            stop = min(n, start + step)
            sim[start:stop] = _similarity_from_gram(gram[start:stop], rows, start)
        self.__dict__["similarity"] = sim
        self._drop_gram_when_done()
        return sim

    def knn(self, k: int) -> torch.Tensor:
        """LongTensor ``[n, k]``: the k nearest other rows, descending similarity."""
        k = _check_k(k, self.n_rows)
        if self._knn is None or self._knn.shape[1] < k:
            if self._source is not None:  # neighbour j of row perm[i] becomes inverse[j]
                self._knn = self._inverse[self._source.knn(k)[self._perm]]
            else:
                self._knn = _topk_rows(self.similarity, k)
            self._neighbour_sim = None
        return self._knn[:, :k]

    def _neighbour_similarities(self, k: int) -> torch.Tensor:
        """float32 ``[n, k]``: ``cos(i, knn(k)[i, j])``, descending in every row."""
        self.knn(k)
        width = self._knn.shape[1]
        if self._neighbour_sim is None or self._neighbour_sim.shape[1] < k:
            if self._source is not None:
                self._neighbour_sim = self._source._neighbour_similarities(width)[self._perm]
            else:
                self._neighbour_sim = self.similarity.gather(1, self._knn)
        return self._neighbour_sim[:, :k]

    def _similarities_at(self, rows: slice, idx: torch.Tensor) -> torch.Tensor:
        """float32 ``[c, m]``: ``cos(i, idx[i - rows.start, j])`` for the rows ``rows``."""
        if self._source is None:
            return self.similarity[rows].gather(1, idx)
        perm = self._perm  # read through the permutation: whole rows, then within rows
        return self._source.similarity.index_select(0, perm[rows]).gather(1, perm[idx])

    @_cached
    def centred_unit(self) -> torch.Tensor:
        """float64 ``[n, d]``: column-centred, unit Frobenius norm."""
        if self._source is not None:
            return self._source.centred_unit[self._perm]
        return _centred_unit(self.matrix, "embeddings")

    @_cached
    def self_cross_norm(self) -> float:
        """``||U^T U||_F`` of :attr:`centred_unit` (linear CKA denominator)."""
        if self._source is not None:  # invariant to the row order
            return self._source.self_cross_norm
        u = self.centred_unit
        return float(torch.linalg.matrix_norm(u.T @ u))

    @_cached
    def rbf(self) -> tuple[torch.Tensor, float, float]:
        """``(H K H as float64 [n, n], its Frobenius norm, sigma)``."""
        if self._source is not None:  # materialised only when asked for directly
            kernel, norm, sigma = self._source.rbf
            return kernel[self._perm][:, self._perm], norm, sigma
        kernel, sigma = _rbf_centred_gram(_rbf_gram(self.matrix, lambda: self._gram),
                                          self.sigma_rule)
        self.__dict__["rbf"] = (kernel, math.sqrt(_frobenius_dot(kernel, kernel)), sigma)
        self._drop_gram_when_done()
        return self.__dict__["rbf"]

    def _rbf_parts(self) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """``(kernel, its norm, row order)``: this member's centred RBF Gram is
        ``kernel[order][:, order]`` (order None: as is), without copying it."""
        if self._source is not None:
            kernel, norm, _ = self._source.rbf
            return kernel, norm, self._perm
        kernel, norm, _ = self.rbf
        return kernel, norm, None

    def prepare(self, ks: Sequence[int], metrics: Sequence[str] = STATIC_METRICS) -> None:
        """Compute now every cache that :func:`compare_embeddings` reads for ``ks`` and
        ``metrics``, so later comparisons only read this object (safe from several threads)."""
        ks = valid_ks(ks, self.n_rows)
        if ks and ("topk_overlap" in metrics or "local_spearman" in metrics):
            self._neighbour_similarities(max(ks))
        if "procrustes" in metrics or "linear_cka" in metrics:
            _ = self.self_cross_norm
        if "rbf_cka" in metrics:
            _ = self.rbf

    def permuted(self, generator: torch.Generator | None = None) -> EmbeddingGeometry:
        """The geometry of :func:`row_permuted` rows (the null partner). It shares this
        member's cached work and reads it through the permutation (k-NN lists are remapped,
        similarities and RBF Gram entries are looked up), so nothing ``n x n`` is copied.

        Uses the same permutation as ``row_permuted(self.matrix, generator)`` for a generator
        in the same state. Among exactly equal cosine similarities its k-NN lists keep the
        source's order (lower source row first) where the one-shot functions on the permuted
        rows would put the lower permuted row first: with such ties (duplicate or collinear
        rows) its neighbour metrics may differ from theirs; without ties they are equal.
        """
        n = self.n_rows
        perm = torch.randperm(n, generator=generator).to(self.matrix.device)
        new = EmbeddingGeometry.__new__(EmbeddingGeometry)
        new.matrix, new.n_rows, new.dim = self.matrix[perm], n, self.dim
        new.sigma_rule = self.sigma_rule
        new._knn = new._neighbour_sim = None
        # compose with our own permutation, so every partner reads the unpermuted source
        new._source = self if self._source is None else self._source
        new._perm = perm if self._perm is None else self._perm[perm]
        new._inverse = torch.empty_like(new._perm).scatter_(
            0, new._perm, torch.arange(n, device=perm.device))
        return new


def _rbf_alignment(a: EmbeddingGeometry, b: EmbeddingGeometry) -> float:
    """``<K_a, K_b>_F / (||K_a|| ||K_b||)`` of two centred RBF Grams (see :func:`rbf_cka`)."""
    (ka, norm_a, order_a), (kb, norm_b, order_b) = a._rbf_parts(), b._rbf_parts()
    if order_a is None and order_b is None:
        return _frobenius_dot(ka, kb) / (norm_a * norm_b)
    n = ka.shape[0]
    if order_a is None:  # sum_ij ka[i, j] kb[q_i, q_j], q = order_b
        q = order_b
    elif order_b is None:
        ka, kb, q = kb, ka, order_a
    else:  # i -> order_a^-1(i): sum_ij ka[i, j] kb[q_i, q_j] with q = order_b[order_a^-1]
        inverse = torch.empty_like(order_a).scatter_(0, order_a, torch.arange(n))
        q = order_b[inverse]
    total = 0.0
    step = max(1, (1 << 21) // n)  # blocks of 16 MiB
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = kb.index_select(0, q[start:stop])  # whole rows: contiguous copies
        block = rows.gather(1, q.expand(stop - start, n))
        total += float(torch.dot(ka[start:stop].reshape(-1), block.reshape(-1)))
    return total / (norm_a * norm_b)


def compare_embeddings(
    a: EmbeddingGeometry,
    b: EmbeddingGeometry,
    ks: Sequence[int],
    metrics: Sequence[str] = STATIC_METRICS,
) -> dict:
    """All pairwise static-embedding metrics of two members.

    Returns ``{"rows": n, "topk_overlap": {k: J}, "local_spearman": {k: rho},
    "procrustes_disparity", "procrustes_cosine", "linear_cka", "rbf_cka"}`` (only the requested
    ``metrics``, a subset of :data:`STATIC_METRICS`); ks outside :func:`valid_ks` are skipped and
    local Spearman uses only k >= 2. Same definitions and helpers as the one-shot functions.

    Raises:
        ValueError: different row counts (or, for Procrustes, dimensions), unknown metric.
    """
    unknown = set(metrics) - set(STATIC_METRICS)
    if unknown:
        raise ValueError(f"unknown static metrics {sorted(unknown)}; known: {STATIC_METRICS}")
    if a.n_rows != b.n_rows:
        raise ValueError(f"members have {a.n_rows} and {b.n_rows} rows; compare the same rows")
    n = a.n_rows
    ks = valid_ks(ks, n)
    out: dict = {"rows": n}
    if "topk_overlap" in metrics:
        out["topk_overlap"] = knn_jaccard(a.knn(max(ks)), b.knn(max(ks)), ks) if ks else {}
    if "local_spearman" in metrics:
        out["local_spearman"] = {}
        sp_ks = [k for k in ks if k >= 2]
        if sp_ks:
            kmax = max(sp_ks)
            knn_a, knn_b = a.knn(kmax), b.knn(kmax)
            own_a, own_b = a._neighbour_similarities(kmax), b._neighbour_similarities(kmax)
            totals, counts = np.zeros(len(sp_ks)), np.zeros(len(sp_ks), dtype=np.int64)
            step = _rows_per_block(kmax * 8)
            for start in range(0, n, step):
                rows = slice(start, min(n, start + step))
                rho_a = _side_spearman(own_a[rows], b._similarities_at(rows, knn_a[rows]), sp_ks)
                rho_b = _side_spearman(own_b[rows], a._similarities_at(rows, knn_b[rows]), sp_ks)
                block_total, block_count = _spearman_totals(rho_a, rho_b)
                totals += block_total
                counts += block_count
            out["local_spearman"] = {k: _nanmean(float(totals[t]), int(counts[t]))
                                     for t, k in enumerate(sp_ks)}
    if "procrustes" in metrics or "linear_cka" in metrics:
        ua, ub = a.centred_unit, b.centred_unit.to(a.centred_unit.device)
        cross = ua.T @ ub  # shared by Procrustes and linear CKA
        if "procrustes" in metrics:
            if a.dim != b.dim:
                raise ValueError(f"Procrustes needs equal dimensions, got {a.dim} and {b.dim}")
            disparity, cosine = _procrustes_units(ua, ub, cross)
            out["procrustes_disparity"], out["procrustes_cosine"] = disparity, cosine
        if "linear_cka" in metrics:
            out["linear_cka"] = _linear_cka_units(cross, a.self_cross_norm, b.self_cross_norm)
    if "rbf_cka" in metrics:
        out["rbf_cka"] = _rbf_alignment(a, b)
    return out


def _default_workers(geos: Sequence[EmbeddingGeometry], cpus: int | None = None) -> int:
    # Threads hide what does not use every core (numpy sorts, LAPACK's SVD, Python). Measured
    # for 5 x 4101 x 768: 2 cores, 2 threads 7.7 s vs 9.0 s for 1; 16 cores, 1/2/4/8 threads
    # 9.2/7.2/5.6/4.5 s. So half the cores, at least 2 and at most 8 (not measured beyond).
    # GPUs queue anyway.
    if any(g.matrix.device.type != "cpu" for g in geos):
        return 1
    cpus = cpus if cpus is not None else _usable_cpus()
    return min(cpus, 8, max(2, cpus // 2))


def _usable_cpus() -> int:
    """The cores this process may run on (its affinity: taskset, SLURM, containers' cpusets),
    not all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def compare_members(
    geos: Sequence[EmbeddingGeometry],
    ks: Sequence[int],
    *,
    null_generator: torch.Generator | None = None,
    metrics: Sequence[str] = STATIC_METRICS,
    workers: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """:func:`compare_embeddings` for every member pair, and the null calibration.

    Returns ``(pairs, null)``: ``pairs`` for ``(i, j)`` in :func:`stats.pair_indices` order;
    ``null`` (only with ``null_generator``, and at least two members) holds one comparison per
    member, member ``i`` against a row-permuted member ``(i + 1) mod m`` (permutations drawn in
    that order), so the null costs ``m`` comparisons rather than one per pair: a row
    permutation destroys the correspondence whichever partner it is applied to.

    Per-member work is done first (:meth:`EmbeddingGeometry.prepare`), then the comparisons,
    both on ``workers`` threads (default on CPU: half the cores, at least 2 and at most 8; 1 on
    a GPU); every step is deterministic,
    so the results do not depend on ``workers``.
    """
    workers = _default_workers(geos) if workers is None else max(1, int(workers))
    inference = torch.is_inference_mode_enabled()  # thread-local: carried into the workers

    def prepare(geo: EmbeddingGeometry) -> None:
        with torch.inference_mode(inference):
            geo.prepare(ks, metrics)

    def compare(job: tuple[EmbeddingGeometry, EmbeddingGeometry]) -> dict:
        with torch.inference_mode(inference):
            return compare_embeddings(*job, ks, metrics)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # each member's own work, then the comparisons, which only read it
        list(pool.map(prepare, geos))
        jobs = [(geos[i], geos[j]) for i, j in pair_indices(len(geos))]
        n_pairs = len(jobs)
        if null_generator is not None and len(geos) > 1:
            jobs += [(geo, geos[(i + 1) % len(geos)].permuted(null_generator))
                     for i, geo in enumerate(geos)]
        results = list(pool.map(compare, jobs))
    return results[:n_pairs], results[n_pairs:]


def summarize_static(
    pairs: Sequence[dict],
    ks: Sequence[int],
    n_rows: int,
    *,
    null: Sequence[dict] = (),
    init: Sequence[dict] = (),
    sigma_rule: float = 0.5,
) -> dict:
    """The report's ``static_embeddings`` block from :func:`compare_embeddings` results.

    ``pairs``: results for the member pairs; ``null``: results of members against row-permuted
    partners; ``init``: results for the pairs of initial (untrained) checkpoints. Each metric
    gets ``{"mean", "std"}`` over pairs (:func:`stats.mean_std_pairs`), plus ``"null"`` and
    ``"init"`` (means over those results, or ``None`` when none were given) and, for top-k
    overlap, the analytic ``"chance"``. With no pair every mean/std is ``None``.
    """
    ks = valid_ks(ks, n_rows)

    def column(results: Sequence[dict], key: str, k: int | None = None) -> list:
        vals = []
        for r in results:
            if key not in r:
                continue
            v = r[key] if k is None else r[key].get(k)
            if v is not None:
                vals.append(v)
        return vals

    def entry(key: str, k: int | None = None) -> dict:
        null_mean = mean_std_pairs(column(null, key, k))["mean"] if null else None
        init_mean = mean_std_pairs(column(init, key, k))["mean"] if init else None
        return {**mean_std_pairs(column(pairs, key, k)), "null": null_mean, "init": init_mean}

    out: dict = {"rows": int(n_rows)}
    out["topk_overlap"] = [
        {"k": k, **entry("topk_overlap", k), "chance": topk_overlap_chance(n_rows, k)}
        for k in ks
    ]
    out["local_spearman"] = [{"k": k, **entry("local_spearman", k)} for k in ks if k >= 2]
    for key in ("procrustes_disparity", "procrustes_cosine", "linear_cka", "rbf_cka"):
        out[key] = entry(key)
    out["rbf_cka"]["bandwidth"] = f"{sigma_rule:g} x median pairwise distance"
    return out
