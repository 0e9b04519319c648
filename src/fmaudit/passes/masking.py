"""Seeded masking that depends only on (seed, window index, salt).

Members of an ensemble, processes of a distributed run and a resumed run therefore all see the
same masked positions for the same window, whatever the batch composition.
"""

from __future__ import annotations

import numpy as np
import torch


def window_generator(seed: int, window_index: int, salt: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, window_index, salt) through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(window_index), int(salt)]).generate_state(2)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def choose_masked_positions(
    eligible: torch.Tensor, window_ids: torch.Tensor, seed: int, prob: float, salt: int = 0
) -> torch.Tensor:
    """Pick ``max(1, round(prob * n_i))`` of the ``n_i`` eligible positions of each window.

    Args:
        eligible: bool ``[B, L]``, True where a token may be masked (not [CLS]/[SEP]/[PAD]).
        window_ids: long ``[B]``, the global index of each window in the evaluation set.
        seed: the run's seed.
        prob: the masking probability (0 < prob <= 1).
        salt: separates independent uses of the same seed (e.g. epochs in training).

    Returns:
        bool ``[B, L]``: the chosen positions (a subset of ``eligible``). A window with no
        eligible position gets none.
    """
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"mask probability must be in (0, 1], got {prob}")
    eligible = eligible.bool().cpu()
    chosen = torch.zeros_like(eligible)
    for row, wid in enumerate(window_ids.tolist()):
        positions = eligible[row].nonzero().flatten()
        n = positions.numel()
        if n == 0:
            continue
        count = max(1, round(prob * n))
        order = torch.randperm(n, generator=window_generator(seed, wid, salt))
        chosen[row, positions[order[:count]]] = True
    return chosen


def bert_corruption(
    input_ids: torch.Tensor,
    masked: torch.Tensor,
    window_ids: torch.Tensor,
    seed: int,
    mask_token_id: int,
    n_regular: int,
    first_regular_id: int,
    salt: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 rule on the chosen positions: [MASK], a random regular token, unchanged.

    Returns ``(corrupted_input_ids, labels)`` with labels -100 outside ``masked``. The random
    draws come from the same per-window generators (salted), so they are reproducible too.
    """
    corrupted = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    labels[masked] = input_ids[masked]
    for row, wid in enumerate(window_ids.tolist()):
        gen = window_generator(seed, wid, salt + 1_000_003)
        u = torch.rand(input_ids.shape[1], generator=gen)
        random_tokens = torch.randint(n_regular, (input_ids.shape[1],), generator=gen)
        m = masked[row]
        to_mask = m & (u < 0.8)
        to_random = m & (u >= 0.8) & (u < 0.9)
        corrupted[row, to_mask] = mask_token_id
        corrupted[row, to_random] = random_tokens[to_random].to(input_ids.dtype) + first_regular_id
    return corrupted, labels
