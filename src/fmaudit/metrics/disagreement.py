"""Disagreement between ensemble members on the same positions.

For every pair of members (i < j) and every top-p level, the Jensen-Shannon distance between
their top-p-truncated predictive distributions, and whether their top-1 predictions agree.
All arithmetic is float64. :class:`DisagreementAccumulator` keeps only sums, so its memory does
not depend on the number of positions, and merges across processes like every accumulator.

Three implementations of the same formulas feed the accumulator:

* dense (accelerators other than CUDA, CUDA where the fused kernel cannot compile, and the
  one-shot functions): every member truncated at every level as a full ``[N, V]`` tensor,
  every pair and level a few passes over ``[N, V]``; on an accelerator the pair's divergence
  is the exact ratio form for every row (:func:`_js_divergence_ratio_bits`), so nothing waits
  for the host.
* sparse (CPU): a member's truncation at all levels is one sort of the probability VALUES and
  a per-row threshold per level (``entry[v]`` = the first level that keeps token v); a pair's
  JS divergence at level c needs logarithms only on the tokens BOTH members keep there
  (:func:`_pair_js_bits_sparse`): for unrelated members about ``sum_c p_c^2`` of the
  vocabulary, at most ``sum_c p_c``, instead of all of it at every level.
* fused (CUDA, ``_FUSED_DEVICES``): the dense arithmetic with every level of a pair in one
  ``torch.compile`` kernel (:func:`_fused_pair_js`) that reads each member's row and a uint8
  entry level once, instead of ~9 passes per level and pair; fed fixed-size row blocks
  (:func:`_row_blocks`), so it is compiled once per vocabulary and number of levels (plus a
  small check, :func:`_try_compile`). Where it cannot compile, the dense path runs (with a
  warning); so does a shape past torch.compile's recompile limit.

Tests run them on the same data and require equal sums (``tests/metrics``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fmaudit.metrics.base import EmptyAccumulatorError, SumAccumulator
from fmaudit.metrics.prediction import (
    NonFiniteLogitsError,
    _check_logits_2d,
    _Chunk,
    _chunk_rows,
)
from fmaudit.metrics.stats import mean_std_pairs, pair_indices

__all__ = [
    "TOP_P_RULES",
    "DisagreementAccumulator",
    "argmax_agreement",
    "js_distance",
    "truncate_top_p",
]

TOP_P_RULES = ("nucleus", "paper")
LN2 = math.log(2.0)

# Divergences (bits) below this are recomputed from probability ratios (see _js_divergence_bits).
_EXACT_BELOW = 1e-7

# The accumulator uses the sparse path for CPU tensors (tests switch it off to compare paths).
_SPARSE_ON_CPU = True
# The dense path's pair JS on the CPU: entropy difference + exact redo of nearly equal rows;
# accelerators use the ratio form (tests switch this on to run that form on the CPU).
_RATIO_FORM_ON_CPU = False

# Sort keys (see _Workspace) are uint32 when they fit in this many bits, else uint64.
_NARROW_KEY_BITS = 32


def _check_probs(probs: torch.Tensor, name: str = "probs") -> torch.Tensor:
    if probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(f"{name} must be a float tensor [N, V], got {tuple(probs.shape)} "
                         f"{probs.dtype}")
    if probs.device.type == "mps":  # no float64 on Apple GPUs
        probs = probs.cpu()
    probs = probs.detach().to(torch.float64)
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    if probs.shape[0] and not bool((probs.sum(dim=-1) > 0).all()):
        raise ValueError(f"{name} has a row with zero total mass")
    return probs


def _check_p(p: float, rule: str) -> float:
    if rule not in TOP_P_RULES:
        raise ValueError(f"top-p rule must be one of {TOP_P_RULES}, got {rule!r}")
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top-p must be in (0, 1], got {p}")
    return p


class _Sorted(NamedTuple):
    """One sort of a batch of distributions, reused for every top-p level."""

    probs: torch.Tensor  # float64 [N, V]
    rank: torch.Tensor  # long [N, V]: each token's position in the descending order
    cum: torch.Tensor  # float64 [N, V]: inclusive cumulative mass / row total, in that order
    mass: torch.Tensor  # float64 [N, V]: inclusive cumulative mass (not divided), in that order


def _stable_sort_desc(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(x, dim=1, descending=True, stable=True)``: equal values keep the lower
    token id first, so identical rows always get identical orders.

    On CPU numpy's vectorised quicksort is ~5x faster; its order among equal values is
    arbitrary, so the (rare) rows containing equal values are re-sorted stably.
    """
    if x.device.type != "cpu":
        return torch.sort(x, dim=1, descending=True, stable=True)
    order = torch.from_numpy(np.argsort(-x.numpy(), axis=1))
    values = x.gather(1, order)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
    if bool(tied.any()):
        values[tied], order[tied] = torch.sort(x[tied], dim=1, descending=True, stable=True)
    return values, order


def _sort_desc(probs64: torch.Tensor) -> _Sorted:
    """Sort rows descending (stable: see :func:`_stable_sort_desc`).

    ``cum`` is divided by the row total, so a float32 row summing to 1 + eps is judged on its
    own mass, and its last entry is exactly 1.
    """
    n, vocab = probs64.shape
    sorted_p, order = _stable_sort_desc(probs64)
    mass = sorted_p.cumsum(dim=-1)
    cum = mass / mass[:, -1:]
    positions = torch.arange(vocab, device=probs64.device).expand(n, vocab)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return _Sorted(probs64, rank, cum, mass)


def _kept_counts(cum: torch.Tensor, p: float, rule: str) -> torch.Tensor:
    """How many of the top tokens each row keeps, long ``[N]`` (in ``[1, V]``).

    Both rules keep a prefix of the sorted tokens because ``cum`` is non-decreasing:
    nucleus keeps token j iff ``cum[j-1] < p`` (``cum[-1] = 0``), i.e. ``1 + #{j: cum[j] < p}``
    tokens (the last ``cum`` is exactly 1 > p); paper keeps ``max(1, #{j: cum[j] <= p})``.
    """
    n, vocab = cum.shape
    if p >= 1.0:  # every token, exactly: no float comparison against 1
        return torch.full((n,), vocab, dtype=torch.long, device=cum.device)
    return _kept_counts_below_one(
        cum, torch.full((n, 1), p, dtype=cum.dtype, device=cum.device), rule)[:, 0]


def _kept_counts_below_one(cum: torch.Tensor, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """:func:`_kept_counts` for several levels at once, long ``[N, L]``: ``targets`` holds
    levels ``p < 1`` as a contiguous ``[N, L]`` tensor (one search for all of them)."""
    if rule == "nucleus":
        return (torch.searchsorted(cum, targets, right=False) + 1).clamp_(max=cum.shape[1])
    return torch.searchsorted(cum, targets, right=True).clamp_(min=1)


def _truncate_sorted(s: _Sorted, p: float, rule: str) -> torch.Tensor:
    """Truncate given :func:`_sort_desc` output; returns renormalised float64 ``[N, V]``."""
    if p >= 1.0:
        kept = s.probs
    else:
        kept_counts = _kept_counts(s.cum, p, rule)
        kept = torch.where(s.rank < kept_counts[:, None], s.probs, 0.0)
    return kept / kept.sum(dim=-1, keepdim=True)


def truncate_top_p(probs: torch.Tensor, p: float, rule: str = "nucleus") -> torch.Tensor:
    """Keep the most probable tokens holding mass p, set the rest to 0, renormalise.

    With tokens sorted by descending probability (stable sort) and ``c_j`` the cumulative mass
    of the first j+1 tokens divided by the row total (float64):

    * ``"nucleus"``: keep token j iff ``c_{j-1} < p`` (``c_{-1} = 0``): the smallest prefix whose
      mass reaches p (Holtzman et al. 2020).
    * ``"paper"``: keep token j iff ``c_j <= p``, and always the top token.

    ``p = 1`` keeps every token exactly (no float comparison against 1 is made).

    Args:
        probs: non-negative float ``[N, V]`` rows (normally summing to 1).
        p: mass to keep, ``0 < p <= 1``. rule: ``"nucleus"`` or ``"paper"``.

    Returns:
        float64 ``[N, V]``, each row summing to 1.

    Raises:
        ValueError: bad shape, negative/non-finite values, a zero row, p outside (0, 1] or an
            unknown rule.

    Example:
        >>> truncate_top_p(torch.tensor([[0.5, 0.3, 0.2]]), 0.6).round(decimals=6).tolist()
        [[0.625, 0.375, 0.0]]
    """
    p = _check_p(p, rule)
    probs64 = _check_probs(probs)
    if probs64.shape[0] == 0:
        return probs64
    return _truncate_sorted(_sort_desc(probs64), p, rule)


def _neg_entropy_nats(p: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v ln p_v`` per row (``0 ln 0 = 0``), float64 ``[N]``."""
    return -torch.special.entr(p).sum(dim=-1)


def _js_divergence_exact_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``1/2 sum p log2(p/m) + 1/2 sum q log2(q/m)`` from the ratios, terms with ``p = 0``
    taken as 0 (``m`` may be 0 there too), as scipy's ``rel_entr``: accurate for nearly
    identical rows, about three times slower than :func:`_js_divergence_bits`."""
    m = 0.5 * (p + q)
    kl_p = torch.where(p > 0, p * torch.log(p / m), 0.0).sum(dim=-1)
    kl_q = torch.where(q > 0, q * torch.log(q / m), 0.0).sum(dim=-1)
    return 0.5 * (kl_p + kl_q) / LN2


def _js_divergence_ratio_bits(p: torch.Tensor, q: torch.Tensor,
                              buffers: tuple[torch.Tensor, torch.Tensor] | None = None
                              ) -> torch.Tensor:
    """``1/2 sum p log2(p/m) + 1/2 sum q log2(q/m)`` (``m = (p + q) / 2``), float64 ``[N]``:
    the arithmetic of :func:`_js_divergence_exact_bits` (scipy's ``rel_entr``, accurate for
    nearly identical rows) in nine elementwise passes and no data-dependent branch, for
    accelerators. ``m`` is floored at the smallest normal float64, which changes nothing where
    ``m > 0`` and makes ``p/m = 0`` where ``p = q = 0``; ``xlogy`` makes terms with ``p = 0``
    exactly 0. ``buffers``: two ``[N, V]`` float64 tensors to work in (spares allocations).
    """
    mid, terms = buffers if buffers is not None else (torch.empty_like(p), torch.empty_like(p))
    torch.add(p, q, out=mid).mul_(0.5).clamp_min_(torch.finfo(torch.float64).tiny)
    torch.xlogy(p, torch.div(p, mid, out=terms), out=terms)
    kl_p = terms.sum(dim=-1)
    torch.xlogy(q, torch.div(q, mid, out=mid), out=mid)
    return 0.5 * (kl_p + mid.sum(dim=-1)) / LN2


def _js_divergence_bits(
    p: torch.Tensor,
    q: torch.Tensor,
    neg_h_p: torch.Tensor,
    neg_h_q: torch.Tensor,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Base-2 JS divergence of rows summing to 1, float64 ``[N]``.

    ``JSD = H(m) - (H(p) + H(q)) / 2`` with ``m = (p + q) / 2``; since ``sum (p + q) = 2``,
    ``H(m) = ln 2 - 1/2 sum s ln s`` with ``s = p + q``. ``neg_h_x = sum x ln x`` is computed
    once per member, so a pair costs one pass over ``[N, V]`` (into ``buffer`` when given,
    to spare an allocation). The difference of entropies loses ~1e-15 absolute, so rows below
    ``_EXACT_BELOW`` bits are recomputed from the ratios (:func:`_js_divergence_exact_bits`):
    nearly identical rows stay accurate. On an accelerator, where choosing rows would need a
    host synchronisation, the ratio form (:func:`_js_divergence_ratio_bits`) serves every row.
    """
    if p.device.type != "cpu":
        return _js_divergence_ratio_bits(p, q)
    s = torch.add(p, q, out=buffer) if buffer is not None else p + q
    entropy_s = torch.special.entr(s, out=s).sum(dim=-1)  # -sum s ln s
    js = (LN2 + 0.5 * entropy_s + 0.5 * (neg_h_p + neg_h_q)) / LN2
    close = js < _EXACT_BELOW
    if bool(close.any()):
        js[close] = _js_divergence_exact_bits(p[close], q[close])
    return js


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon distance, base 2: ``sqrt(JSD_2(p_n, q_n))`` per row.

    ``JSD_2(p, q) = 1/2 sum_v p_v log2(p_v / m_v) + 1/2 sum_v q_v log2(q_v / m_v)`` with
    ``m = (p + q) / 2`` and ``0 log 0 = 0``. Rows are first normalised to sum 1 (as scipy
    does). The divergence is clamped to ``[0, 1]`` before the square root, so identical or
    nearly identical rows give ~0, never NaN. Equals
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)`` row by row.

    Args:
        p, q: non-negative float ``[N, V]``, no zero row.

    Returns:
        float64 ``[N]`` in ``[0, 1]``.

    Raises:
        ValueError: shapes differ, bad shape, negative/non-finite values or a zero row.
    """
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and "
                         f"{tuple(q.shape)}")
    p64 = _check_probs(p, "p")
    q64 = _check_probs(q, "q").to(p64.device)
    p64 = p64 / p64.sum(dim=-1, keepdim=True)
    q64 = q64 / q64.sum(dim=-1, keepdim=True)
    js = _js_divergence_bits(p64, q64, _neg_entropy_nats(p64), _neg_entropy_nats(q64))
    return js.clamp(0.0, 1.0).sqrt()


def argmax_agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``argmax_v a_nv == argmax_v b_nv`` as bool ``[N]`` (ties: the lowest token id wins).

    Raises:
        ValueError: shapes differ or are not ``[N, V]``.
    """
    if logits_a.shape != logits_b.shape or logits_a.dim() != 2:
        raise ValueError(f"logits must both be [N, V], got {tuple(logits_a.shape)} and "
                         f"{tuple(logits_b.shape)}")
    return logits_a.argmax(dim=-1) == logits_b.argmax(dim=-1).to(logits_a.device)


# -- fused accelerator path --------------------------------------------------------------------
class _LevelTable(NamedTuple):
    """The top-p levels as tensors on one device, made once per accumulator and device."""

    below_one: torch.Tensor  # float64 [L]: p, or 0.5 where p >= 1 (searched, then replaced)
    whole: torch.Tensor  # bool [L]: p >= 1 (every token kept, exactly)
    ascending: torch.Tensor  # long [L]: the levels' indices in ascending order of p
    place: torch.Tensor  # uint8 [L]: each level's position in that order


def _level_table(levels: Sequence[float], device: torch.device) -> _LevelTable:
    place, order = _ascending_places(levels)
    return _LevelTable(
        torch.tensor([p if p < 1.0 else 0.5 for p in levels], dtype=torch.float64).to(device),
        torch.tensor([p >= 1.0 for p in levels]).to(device),
        torch.tensor(order, dtype=torch.long).to(device),
        torch.tensor(place, dtype=torch.uint8).to(device))


def _ascending_places(levels: Sequence[float]) -> tuple[list[int], list[int]]:
    """``(place, order)``: ``order`` lists the levels' indices in ascending order of p (stable)
    and ``place[c]`` is level c's position in it."""
    order = sorted(range(len(levels)), key=lambda c: levels[c])
    place = [0] * len(levels)
    for rank, c in enumerate(order):
        place[c] = rank
    return place, order


class _DeviceLevels(NamedTuple):
    """One member's chunk truncated at every level, on its device, for :func:`_fused_pair_js`."""

    probs: torch.Tensor  # float64 [n, V]
    entry: torch.Tensor  # uint8 [n, V]: place in ascending order of the first level keeping v
    mass: torch.Tensor  # float64 [n, L]: kept mass Z_c, levels in the table's order


def _device_levels(probs: torch.Tensor, levels: _LevelTable, rule: str) -> _DeviceLevels:
    """Truncate one member's rows at all ``levels`` from one stable sort, in a fixed number of
    operations (no per-level loop, no host sync).

    Level c keeps the first ``k_c`` tokens of the sorted row (:func:`_kept_counts`, all levels
    in one search); in ascending order of p the counts do not decrease, so token v (sorted
    position ``rank_v``) is kept from the ascending place ``entry_v = #{c: k_c <= rank_v}`` on:
    one more ``searchsorted``. ``Z_c`` is the cumulative mass at ``k_c - 1`` (a single kept
    token: exactly its value, so its truncated row is exactly 1, as in
    :func:`_truncate_sorted`, and two such rows have JS exactly 0).
    """
    s = _sort_desc(probs)
    n, vocab = probs.shape
    counts = _kept_counts_below_one(s.cum, levels.below_one.expand(n, -1).contiguous(), rule)
    counts = torch.where(levels.whole, vocab, counts)
    entry = torch.searchsorted(counts.index_select(1, levels.ascending), s.rank, right=True)
    return _DeviceLevels(probs, entry.to(torch.uint8), s.mass.gather(1, counts - 1))


def _row_blocks(member: _DeviceLevels, rows: int) -> list[_DeviceLevels]:
    """``member`` cut into blocks of exactly ``rows`` rows, so the compiled kernel sees one
    shape per vocabulary (on an H100, compiled for dynamic shapes it took 4.6x as long on a
    batch as compiled for that batch's exact shape; ``benchmarks/js_bench.py``). The last
    block is padded with rows that add exactly 0 to every sum of :func:`_fused_pair_js`:
    probabilities 0 and masses 1 truncate to all-zero rows, whose divergence terms are
    ``xlogy(0, 0) = 0``."""
    blocks = []
    for start in range(0, member.probs.shape[0], rows):
        block = _DeviceLevels(*(t[start : start + rows] for t in member))
        short = rows - block.probs.shape[0]
        if short:
            block = _DeviceLevels(F.pad(block.probs, (0, 0, 0, short)),
                                  F.pad(block.entry, (0, 0, 0, short)),
                                  F.pad(block.mass, (0, 0, 0, short), value=1.0))
        blocks.append(block)
    return blocks


def _fused_pair_js(
    p: torch.Tensor,
    entry_p: torch.Tensor,
    mass_p: torch.Tensor,
    q: torch.Tensor,
    entry_q: torch.Tensor,
    mass_q: torch.Tensor,
    place: torch.Tensor,
) -> torch.Tensor:
    """``sum_n sqrt(clamp(JSD_2(p'_c, q'_c), 0, 1))`` per level, float64 ``[L]``.

    ``p'_c = [entry_p <= place_c] p / Z_p,c`` (likewise ``q'_c``; see :func:`_device_levels`,
    ``place``: uint8 ``[L]`` from :func:`_ascending_places`) and the divergence in
    the ratio form of :func:`_js_divergence_ratio_bits` (scipy's ``rel_entr`` arithmetic).
    Written over ``[n, L, V]`` broadcasts: compiled (:func:`_compiled_pair_js`), every level
    and the row sum become one pass that reads p, q and their entries once per pair; eager,
    the temporaries are ``[n, L, V]`` (tests only).
    """
    level = place.view(1, -1, 1)
    # divide (not multiply by 1 / Z): a lone kept token becomes exactly 1, as in the dense path
    pc = torch.where(entry_p.unsqueeze(1) <= level, p.unsqueeze(1) / mass_p.unsqueeze(2), 0.0)
    qc = torch.where(entry_q.unsqueeze(1) <= level, q.unsqueeze(1) / mass_q.unsqueeze(2), 0.0)
    mid = ((pc + qc) * 0.5).clamp_min(torch.finfo(torch.float64).tiny)
    # the two sums apart, as _js_divergence_ratio_bits (the same rounding where JS ~ 0)
    kl_p = torch.xlogy(pc, pc / mid).sum(dim=-1)
    kl_q = torch.xlogy(qc, qc / mid).sum(dim=-1)
    jsd = 0.5 * (kl_p + kl_q) / LN2  # [n, L]
    return jsd.clamp(0.0, 1.0).sqrt().sum(dim=0)


# Device types that take the fused path, through torch.compile (Triton on CUDA). On an H100
# (bert-90m, 5 members, 2026-11-26) the whole audit took 0.57x the time of the per-level path
# (`benchmarks/audit_bench.py --alt-js` times both); on the CPU the sparse path is ~4x faster
# than either dense form. Tests add "cpu" (inductor's C++ backend) and may switch compilation
# off to run the same function eagerly.
_FUSED_DEVICES: tuple[str, ...] = ("cuda",)
# Most rows per call of the compiled kernel (see _block_rows): 512 x 4101 float64 is 16 MiB a
# row block, enough work per launch.
_FUSED_ROWS = 512
_COMPILE_FUSED = True
_compiled: dict[str, object] = {}  # device type -> the function to call, or None: unavailable
_limit_warned: set[str] = set()  # device types told that the recompile limit was reached


def _block_rows(chunk_rows: int) -> int:
    """Rows per fused block for chunks of ``chunk_rows`` rows: a full chunk splits into equal
    blocks of at most ``_FUSED_ROWS`` (1022 rows: 2 x 511, 699: 2 x 350), so only the last
    chunk of a batch is padded and the kernel sees one shape per vocabulary."""
    blocks = -(-chunk_rows // _FUSED_ROWS)
    return -(-chunk_rows // blocks)


def _compiled_pair_js(device_type: str):
    """:func:`_fused_pair_js` compiled for ``device_type`` (once per process), or ``None``
    when it cannot be used there (then the per-level dense path runs)."""
    if device_type not in _FUSED_DEVICES:
        return None
    if device_type not in _compiled:
        _compiled[device_type] = _try_compile(device_type) if _COMPILE_FUSED else _fused_pair_js
    return _compiled[device_type]


def _try_compile(device_type: str):
    """Compile :func:`_fused_pair_js` and check it on a small input against the eager
    function (so a broken toolchain shows here, once, not as wrong sums)."""
    try:
        # one shape per vocabulary (_row_blocks); fullgraph: past torch.compile's recompile
        # limit a new shape raises (see _add_chunk_dense) instead of running the function
        # eagerly with [rows, levels, vocabulary] temporaries
        fn = torch.compile(_fused_pair_js, dynamic=False, fullgraph=True)
        gen = torch.Generator().manual_seed(0)
        probs = torch.rand(3, 7, generator=gen, dtype=torch.float64).to(device_type)
        table = _level_table([0.5, 1.0], probs.device)
        a = _device_levels(probs / probs.sum(dim=-1, keepdim=True), table, "nucleus")
        b = _device_levels(probs.flip(1) / probs.sum(dim=-1, keepdim=True), table, "nucleus")
        got, expected = fn(*a, *b, table.place), _fused_pair_js(*a, *b, table.place)
        if not torch.allclose(got, expected, rtol=1e-12, atol=1e-15):
            raise RuntimeError(f"compiled result {got.tolist()} != eager {expected.tolist()}")
        return fn
    except Exception as exc:  # any compiler failure: fall back, and say so once
        _warn_unfused(device_type, exc)
        return None


def _warn_recompile_limit(device_type: str) -> None:
    if device_type not in _limit_warned:
        _limit_warned.add(device_type)
        warnings.warn(f"the fused top-p JS kernel on {device_type} reached torch.compile's "
                      "recompile limit (torch._dynamo.config.recompile_limit); shapes it was not "
                      "compiled for take the slower unfused path", RuntimeWarning, stacklevel=3)


def _warn_unfused(device_type: str, exc: Exception) -> None:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    warnings.warn(f"the fused top-p JS kernel is unavailable on {device_type} "
                  f"({type(exc).__name__}: {first_line}); using the slower unfused path",
                  RuntimeWarning, stacklevel=3)


# -- sparse CPU path ---------------------------------------------------------------------------
class _Workspace:
    """Reused buffers of the sparse path for chunks of up to ``rows`` rows.

    Fresh multi-MiB allocations are page-faulting mappings that cost more than the arithmetic
    done in them, so the pair buffers are allocated once per accumulator. Sort keys pack
    ``(row, entry level, token id)`` into one unsigned integer, most significant first: sorting
    a row's keys orders its tokens by level, and the keys of a whole chunk are then sorted
    globally, so one ``searchsorted`` finds every row's level boundaries.
    """

    def __init__(self, rows: int, vocab: int, n_levels: int) -> None:
        self.rows, self.vocab = rows, vocab
        self.tok_bits = max(1, (vocab - 1).bit_length())
        self.row_shift = self.tok_bits + max(1, n_levels.bit_length())  # entry in [0, L]
        bits = self.row_shift + max(1, (rows - 1).bit_length())
        self.dtype = np.uint32 if bits <= _NARROW_KEY_BITS else np.uint64
        row_ids = np.arange(rows, dtype=self.dtype)[:, None]
        self.base = (row_ids << self.dtype(self.row_shift)) | np.arange(vocab, dtype=self.dtype)
        self.key = np.empty((rows, vocab), dtype=self.dtype)
        self.order = torch.empty(rows, vocab, dtype=torch.long)
        self.gathered = torch.empty(4, rows * vocab + 1, dtype=torch.float64)
        self._t = np.empty(0)
        self._log = np.empty(0)

    def t_buffer(self, size: int) -> np.ndarray:
        """A float64 buffer of ``size`` elements (grown, never shrunk)."""
        if self._t.size < size:
            self._t = np.empty(size)
        return self._t[:size]

    def log_buffer(self, size: int) -> np.ndarray:
        if self._log.size < size:
            self._log = np.empty(size)
        return self._log[:size]


class _MemberLevels(NamedTuple):
    """One member's chunk truncated at every level (levels in ascending order of p)."""

    probs: torch.Tensor  # float64 [n, V]
    entry: np.ndarray  # uint8 [n, V]: first level keeping the token (L: no level keeps it)
    key: np.ndarray  # [n, V] sort keys (row, entry, token id), see _Workspace
    mass: torch.Tensor  # float64 [n, L]: kept mass Z_c of each level
    has_zero: bool  # some probability underflowed to 0 (then x ln x needs 0 ln 0 = 0)


def _member_levels(
    chunk: _Chunk, levels: Sequence[float], rule: str, ws: _Workspace
) -> _MemberLevels:
    """Truncate one member's CPU chunk at all ``levels`` (ascending) from one value sort.

    With ``d`` the row's probabilities sorted descending and ``c_j`` their cumulative sum
    divided by the row total (as :func:`_sort_desc`), level p keeps the first ``k_p`` tokens
    (:func:`_kept_counts`), i.e. every token with ``p_v > tau_p = d[k_p - 1]`` and all with
    ``p_v = tau_p``, unless a run of equal values straddles the cut (``d[k_p] = tau_p``): such
    rows take the stable order (lower id first) from :func:`_stable_sort_desc`, exactly as the
    dense path. ``Z_p = sum_{j < k_p} d_j``.
    """
    probs = chunk.probs
    n, vocab = probs.shape
    values = probs.numpy()
    desc = torch.from_numpy(np.ascontiguousarray(np.sort(values, axis=1)[:, ::-1]))
    csum = desc.cumsum(dim=1)  # [n, V], descending order
    partial = [c for c, p in enumerate(levels) if p < 1.0]  # a prefix: levels ascend
    kept = torch.full((n, len(levels)), vocab, dtype=torch.long)
    entry = np.zeros((n, vocab), dtype=np.uint8)
    if partial:
        cum = csum / csum[:, -1:]
        targets = torch.tensor([levels[c] for c in partial], dtype=torch.float64)
        k = _kept_counts_below_one(cum, targets.expand(n, -1).contiguous(), rule)
        kept[:, : len(partial)] = k
        tau = desc.gather(1, k - 1)  # [n, L'] the smallest kept value
        straddle = ((k < vocab) & (desc.gather(1, k.clamp(max=vocab - 1)) == tau)).any(dim=1)
        tau_np = tau.numpy()
        below = np.empty((n, vocab), dtype=bool)
        for c in range(len(partial)):  # entry = number of levels whose threshold v is below
            np.less(values, tau_np[:, c : c + 1], out=below)
            entry += below
        rows = straddle.nonzero().flatten()
        if rows.numel():  # ties across a cut: ranks from the stable order, as the dense path
            _, order = _stable_sort_desc(probs[rows])
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(vocab).expand(len(rows), vocab))
            entry[rows.numpy()] = (rank[:, :, None] >= k[rows][:, None, :]).sum(dim=2).numpy()
    key = entry.astype(ws.dtype)
    np.left_shift(key, ws.dtype(ws.tok_bits), out=key)
    np.bitwise_or(key, ws.base[:n], out=key)
    mass = csum.gather(1, kept - 1)  # [n, L]
    has_zero = bool((desc[:, -1] == 0.0).any())  # the smallest value of every row
    return _MemberLevels(probs, entry, key, mass, has_zero)


def _x_ln_x(x: np.ndarray, out: np.ndarray, zeros: bool, scratch: np.ndarray | None = None):
    """``out = x ln x`` elementwise with ``0 ln 0 = 0`` (``out`` may be ``x``).

    Zeros (probabilities that underflowed) are only looked for when ``zeros`` is set: they are
    raised to the smallest normal float, whose ``x ln x`` (~1e-305) is 0 to any precision here.
    """
    if zeros:
        x = np.maximum(x, np.finfo(np.float64).tiny)
    log = np.log(x, out=scratch if scratch is not None else (out if out is not x else None))
    np.multiply(x, log, out=out)
    return out


def _segment_sums(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``sum(flat[..., s : s + l])`` per segment along the last axis (0 for ``l = 0``).

    Segment i runs to segment i + 1's start (``reduceat``), so the lengths only mark the empty
    ones. ``flat`` must hold a finite element after the last segment (``reduceat`` reads
    ``flat[s]`` for an empty segment, and a start may equal the data length).
    """
    return np.add.reduceat(flat, starts, axis=-1) * (lengths > 0)


def _pair_js_bits_sparse(
    a: _MemberLevels, b: _MemberLevels, n_levels: int, ws: _Workspace
) -> torch.Tensor:
    """Base-2 JS divergence of members a and b truncated at every level, float64 ``[n, L]``.

    With ``p' = p / Z_p`` and ``q' = q / Z_q`` the truncated rows, ``s = p' + q'``,
    ``JSD = ln 2 - 1/2 sum_v (s ln s - p' ln p' - q' ln q')`` (nats), and the summand is 0
    unless both members keep v: only the intersection ``I_c`` is visited. Sorting each row by
    ``e_v = max(entry_a, entry_b)`` (the level where v enters ``I``) makes ``I_c`` a prefix of
    the row for every level. Writing ``t = p + r q`` with ``r = Z_p / Z_q``:
    ``sum_I D = (T - S_{p ln p} - r S_{q ln q} - r ln r S_q) / Z_p`` with ``T = sum_I t ln t``
    and ``S_x`` the sums over I, so one logarithm per element of ``I_c`` per level. Rows below
    ``_EXACT_BELOW`` bits are recomputed densely from the ratios (as the dense path).
    """
    n, vocab = a.probs.shape
    size = n * vocab
    row_start = np.arange(n) * vocab
    # keys share row and token bits: the max carries max(entry_a, entry_b)
    key = np.maximum(a.key, b.key, out=ws.key[:n])
    key.sort(axis=1)
    levels_up = np.arange(1, n_levels + 1, dtype=ws.dtype) << ws.dtype(ws.tok_bits)
    bounds = ws.base[:n, :1] | levels_up  # [n, L]: the first key of level c + 1 in each row
    ends = np.searchsorted(key.reshape(-1), bounds.reshape(-1)).reshape(n, n_levels)
    cnt = ends - row_start[:, None]  # [n, L]: |I_c| per row
    order = ws.order[:n]
    np.bitwise_and(key, ws.dtype((1 << ws.tok_bits) - 1), out=order.numpy(), casting="unsafe")
    gathered = ws.gathered[:, : size + 1]
    gathered[:, size] = 0.0
    view = gathered[:, :size].view(4, n, vocab)
    for slot, src in enumerate((a.probs, b.probs)):
        torch.gather(src, 1, order, out=view[slot])
    # p ln p and q ln q in that order: recomputing the (hot) logarithms is cheaper than
    # gathering precomputed ones from memory
    flat = gathered.numpy()
    for slot in (0, 1):
        _x_ln_x(flat[slot, :size], flat[slot + 2, :size], a.has_zero or b.has_zero)
    # S_x over I_c: sums per (row, level bucket), cumulated over the buckets
    starts = np.concatenate([row_start[:, None], ends], axis=1)  # [n, L + 1] bucket starts
    lengths = np.diff(starts, axis=1, append=0)
    buckets = _segment_sums(gathered[1:].numpy(), starts.reshape(-1), lengths.reshape(-1))
    s_q, s_plogp, s_qlogq = torch.from_numpy(
        np.cumsum(buckets.reshape(3, n, n_levels + 1)[:, :, :n_levels], axis=2))
    ratio = a.mass / b.mass  # r [n, L]
    # T_c = sum_{I_c} t ln t: every level's [n, width_c] block in one buffer, one log
    widths = cnt.max(axis=0)  # [L]
    offsets = np.concatenate([[0], np.cumsum(n * widths)])
    total = int(offsets[-1])
    flat = ws.t_buffer(total + 1)
    flat[total] = 0.0
    p_sorted, q_sorted = view[0], view[1]
    for c in np.flatnonzero(widths):
        width = int(widths[c])
        t = torch.from_numpy(flat[offsets[c] : offsets[c + 1]]).view(n, width)
        torch.addcmul(p_sorted[:, :width], ratio[:, c : c + 1], q_sorted[:, :width], out=t)
    values = flat[:total]
    _x_ln_x(values, values, a.has_zero and b.has_zero, ws.log_buffer(total))  # t ln t
    first = offsets[:-1, None] + np.arange(n)[None, :] * widths[:, None]  # [L, n]
    segments = np.stack([first, first + cnt.T], axis=2).reshape(-1)
    t_sum = np.add.reduceat(flat, segments)[::2].reshape(n_levels, n).T * (cnt > 0)
    sum_d = (torch.from_numpy(t_sum) - s_plogp - ratio * s_qlogq - ratio * ratio.log() * s_q)
    js = 1.0 - sum_d / (a.mass * (2.0 * LN2))
    close = js < _EXACT_BELOW
    if bool(close.any()):  # nearly identical rows: the ratio form on dense truncated rows,
        # normalised as the dense path does (the sqrt of a ~1e-15 divergence feels 1e-16)
        rows, lev = close.nonzero(as_tuple=True)
        lev_col = lev[:, None].to(torch.uint8)
        p = torch.where(torch.from_numpy(a.entry)[rows] <= lev_col, a.probs[rows], 0.0)
        q = torch.where(torch.from_numpy(b.entry)[rows] <= lev_col, b.probs[rows], 0.0)
        js[rows, lev] = _js_divergence_exact_bits(p / p.sum(dim=-1, keepdim=True),
                                                  q / q.sum(dim=-1, keepdim=True))
    return js


class DisagreementAccumulator(SumAccumulator):
    """Streaming inter-member disagreement over the same predicted positions.

    For each pair ``(i, j)``, ``i < j`` of the ``n_members`` members and each ``p`` in
    ``top_ps`` it sums ``JS_distance(trunc_p(P_i), trunc_p(P_j))`` over positions, and for each
    pair the number of positions where the top-1 predictions agree. Float64 sums laid out as
    ``[n, js[pair, p] (row-major), agree[pair], nonfinite]`` (``nonfinite``: positions with
    NaN/inf logits in some member, only ever counted on an accelerator).

    :meth:`compute` returns, per p, the mean over positions and pairs and the sample std
    (ddof=1) of the per-pair means; with one member there is no pair and every value is
    ``None`` (not applicable, not zero).

    ``update`` never waits for an accelerator (the sums stay on the logits' device); on the CPU
    it uses the sparse path (see the module docstring), same sums up to float rounding.

    Args:
        n_members: ensemble size (>= 1). top_ps: levels in (0, 1]. rule: ``"nucleus"`` or
            ``"paper"`` (see :func:`truncate_top_p`).

    Example:
        >>> acc = DisagreementAccumulator(2, [0.5, 1.0])
        >>> logits = torch.randn(3, 10)
        >>> acc.update([logits, logits])
        >>> acc.compute()["js_distance"][1]
        {'top_p': 1.0, 'mean': 0.0, 'std': None}
    """

    def __init__(self, n_members: int, top_ps: Sequence[float], rule: str = "nucleus") -> None:
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        if not top_ps:
            raise ValueError("top_ps must name at least one level")
        self.n_members = int(n_members)
        self.rule = rule
        self.top_ps = tuple(_check_p(p, rule) for p in top_ps)
        # the sparse path wants ascending levels; _level_order[c] = position of level c in top_ps
        _, self._level_order = _ascending_places(self.top_ps)
        self.pairs = pair_indices(self.n_members)
        self._workspace: _Workspace | None = None  # sparse-path buffers, built on first use
        self._level_tables: dict[torch.device, _LevelTable] = {}  # fused path, per device
        n_pairs, n_ps = len(self.pairs), len(self.top_ps)
        super().__init__(1 + n_pairs * n_ps + n_pairs + 1)

    def _config(self) -> dict:
        return {"n_members": self.n_members, "top_ps": list(self.top_ps), "rule": self.rule}

    def _views(self, sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(count [1], js [pairs, p], agree [pairs], nonfinite [1])`` views of ``sums``."""
        n_pairs, n_ps = len(self.pairs), len(self.top_ps)
        js = sums[1 : 1 + n_pairs * n_ps].view(n_pairs, n_ps)
        agree = sums[1 + n_pairs * n_ps : 1 + n_pairs * n_ps + n_pairs]
        return sums[0:1], js, agree, sums[-1:]

    def update(self, member_logits: Sequence[torch.Tensor]) -> None:
        """Add one batch: ``member_logits[m]`` is member m's ``[N, V]`` logits for the SAME
        N positions in the same order.

        Raises:
            ValueError: wrong number of members or mismatched shapes.
            NonFiniteLogitsError: NaN/inf in CPU logits (on an accelerator such positions are
                counted and :meth:`compute` raises).
        """
        if len(member_logits) != self.n_members:
            raise ValueError(f"expected logits of {self.n_members} members, got "
                             f"{len(member_logits)}")
        shapes = {tuple(t.shape) for t in member_logits}
        if len(shapes) != 1:
            raise ValueError(f"members' logits must have one shape, got {sorted(shapes)}")
        logits = [_check_logits_2d(t) for t in member_logits]
        device = logits[0].device
        logits = [t.to(device) for t in logits]
        n = logits[0].shape[0]
        on_cpu = device.type == "cpu"
        batch = torch.zeros(self._sums.shape, dtype=torch.float64, device=device)
        step = _chunk_rows(logits[0])  # as PredictionAccumulator's
        for start in range(0, n, step):
            chunks = [_Chunk(t[start : start + step]) for t in logits]
            for chunk, full in zip(chunks, logits, strict=True):
                chunk.raise_if_nonfinite_on_cpu(full)
            if on_cpu and _SPARSE_ON_CPU and len(self.top_ps) < 255:  # entry levels: uint8
                self._add_chunk_sparse(chunks, batch)
            else:
                self._add_chunk_dense(chunks, batch)
        self._add(batch)

    def _add_common(self, chunks: Sequence[_Chunk], batch: torch.Tensor) -> None:
        """Position count, top-1 agreement and the non-finite count of one chunk."""
        count, _, agree, nonfinite = self._views(batch)
        count += chunks[0].logp.shape[0]
        top1 = [c.logits.argmax(dim=-1) for c in chunks]  # as argmax_agreement
        for k, (i, j) in enumerate(self.pairs):
            agree[k] += (top1[i] == top1[j]).sum()
        finite = chunks[0].finite
        for c in chunks[1:]:
            finite = finite & c.finite
        nonfinite += (~finite).sum()

    def _add_chunk_dense(self, chunks: Sequence[_Chunk], batch: torch.Tensor) -> None:
        """The dense path: truncated ``[n, V]`` rows per member and level (accelerators)."""
        self._add_common(chunks, batch)
        if not self.pairs:
            return
        _, js, _, _ = self._views(batch)
        device = chunks[0].probs.device
        rows = _block_rows(_chunk_rows(chunks[0].probs))
        fused = _compiled_pair_js(device.type) if len(self.top_ps) < 255 else None  # uint8
        if fused is not None:  # one sort per member, then one compiled pass per pair and block
            table = self._level_table_on(device)
            members = [_row_blocks(_device_levels(c.probs, table, self.rule), rows)
                       for c in chunks]
            try:  # a recompilation (new shape) can still fail: then this chunk goes unfused
                sums = [sum(fused(*a, *b, table.place)
                            for a, b in zip(members[i], members[j], strict=True))
                        for i, j in self.pairs]
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "FailOnRecompileLimitHit":  # this shape goes unfused
                    _warn_recompile_limit(device.type)
                else:
                    _compiled[device.type] = None
                    _warn_unfused(device.type, exc)
            else:
                for k, pair_sums in enumerate(sums):
                    js[k] += pair_sums
                return
        sorted_rows = [_sort_desc(c.probs) for c in chunks]  # one sort per member per chunk
        ratio_form = chunks[0].probs.device.type != "cpu" or _RATIO_FORM_ON_CPU
        buffers = (torch.empty_like(chunks[0].probs), torch.empty_like(chunks[0].probs))
        for c, p in enumerate(self.top_ps):
            trunc = [_truncate_sorted(sr, p, self.rule) for sr in sorted_rows]
            # on the CPU: entropies once per member, a pair in ~3 passes, the few nearly equal
            # rows redone exactly; on an accelerator the ratio form for every row (no sync)
            neg_h = None if ratio_form else [_neg_entropy_nats(t) for t in trunc]
            for k, (i, j) in enumerate(self.pairs):
                js_bits = (_js_divergence_bits(trunc[i], trunc[j], neg_h[i], neg_h[j], buffers[0])
                           if neg_h is not None
                           else _js_divergence_ratio_bits(trunc[i], trunc[j], buffers))
                js[k, c] += js_bits.clamp(0.0, 1.0).sqrt().sum()

    def _level_table_on(self, device: torch.device) -> _LevelTable:
        """The levels as tensors on ``device`` (copied there once)."""
        if device not in self._level_tables:
            self._level_tables[device] = _level_table(self.top_ps, device)
        return self._level_tables[device]

    def _add_chunk_sparse(self, chunks: Sequence[_Chunk], batch: torch.Tensor) -> None:
        """The sparse CPU path (:func:`_member_levels`, :func:`_pair_js_bits_sparse`)."""
        self._add_common(chunks, batch)
        if not self.pairs:
            return
        _, js, _, _ = self._views(batch)
        levels = [self.top_ps[c] for c in self._level_order]
        n, vocab = chunks[0].probs.shape
        ws = self._workspace
        if ws is None or ws.vocab != vocab or ws.rows < n:
            ws = self._workspace = _Workspace(n, vocab, len(levels))
        members = [_member_levels(c, levels, self.rule, ws) for c in chunks]
        for k, (i, j) in enumerate(self.pairs):
            js_bits = _pair_js_bits_sparse(members[i], members[j], len(levels), ws)
            js[k, self._level_order] += js_bits.clamp(0.0, 1.0).sqrt().sum(dim=0)

    def compute(self) -> dict:
        """``{"top_p_rule", "pairs", "positions", "js_distance": [{"top_p", "mean", "std"}],
        "argmax_agreement": {"mean", "std"}}``; means over positions and pairs, std over the
        per-pair means (ddof=1; ``None`` with fewer than two pairs; everything ``None`` with one
        member).

        Raises:
            EmptyAccumulatorError: nothing accumulated.
            NonFiniteLogitsError: NaN/inf logits were accumulated (accelerator updates).
        """
        count, js, agree = self._checked_views()
        n = float(count[0])
        per_pair_js = js / n  # [pairs, p]
        per_pair_agree = agree / n
        return {
            "top_p_rule": self.rule,
            "pairs": len(self.pairs),
            "positions": round(n),
            "js_distance": [
                {"top_p": p, **mean_std_pairs(per_pair_js[:, c].tolist())}
                for c, p in enumerate(self.top_ps)
            ],
            "argmax_agreement": mean_std_pairs(per_pair_agree.tolist()),
        }

    def pair_means(self) -> dict:
        """Per-pair means, for inspection: ``{"pairs": [[i, j], ...], "js_distance":
        [[per p] per pair], "argmax_agreement": [per pair]}``.

        Raises:
            EmptyAccumulatorError: nothing accumulated.
            NonFiniteLogitsError: NaN/inf logits were accumulated (accelerator updates).
        """
        count, js, agree = self._checked_views()
        n = float(count[0])
        return {
            "pairs": [list(pair) for pair in self.pairs],
            "js_distance": (js / n).tolist(),
            "argmax_agreement": (agree / n).tolist(),
        }

    def _checked_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Host ``(count, js, agree)``; raises when empty or when NaN/inf were counted."""
        count, js, agree, nonfinite = self._views(self._host_sums())
        n = float(count[0])
        if n <= 0:
            raise EmptyAccumulatorError("no predicted positions were accumulated")
        if float(nonfinite[0]) > 0:
            raise NonFiniteLogitsError(
                f"logits contained NaN or inf in {round(float(nonfinite[0]))} of {round(n)} "
                "positions (a member diverged or its forward pass is broken)")
        return count, js, agree
