"""Evaluation batches: the same windows and the same predicted positions for every member.

Masked LMs predict a seeded 15% of the non-special positions (replaced by [MASK]); causal LMs
predict every non-special next token. Which windows a process sees depends only on its rank
(window i goes to rank i mod world), and masks depend only on (seed, window index), so a
distributed audit sums exactly the terms of the single-process one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fmaudit.models.load import MLM
from fmaudit.passes.masking import choose_masked_positions


@dataclass
class EvalBatch:
    window_ids: torch.Tensor  # [B] global window indices
    input_ids: torch.Tensor  # [B, L] what the model reads ([MASK] at predicted positions for MLM)
    attention_mask: torch.Tensor  # [B, L]
    target_mask: torch.Tensor  # [B, L] bool: positions whose logits predict a token
    labels: torch.Tensor  # [N] the tokens to predict, in row-major order of target_mask

    @property
    def n_predicted(self) -> int:
        return int(self.labels.numel())

    def pin_memory(self) -> EvalBatch:
        """Page-locked copies of the CPU tensors, so a later ``to(cuda, non_blocking=True)``
        overlaps compute; tensors already on a device are kept as they are."""
        return EvalBatch(*(t.pin_memory() if t.device.type == "cpu" else t for t in (
            self.window_ids, self.input_ids, self.attention_mask, self.target_mask, self.labels)))

    def to(self, device: torch.device, non_blocking: bool = False) -> EvalBatch:
        return EvalBatch(*(t.to(device, non_blocking=non_blocking) for t in (
            self.window_ids, self.input_ids, self.attention_mask, self.target_mask, self.labels)))


def make_batch(encoded: dict[str, torch.Tensor], window_ids: torch.Tensor, objective: str,
               seed: int, mask_prob: float, mask_token_id: int | None) -> EvalBatch:
    """Turn encoded windows into model inputs, target positions and labels."""
    ids = encoded["input_ids"]
    attn = encoded["attention_mask"]
    eligible = attn.bool() & ~encoded["special_tokens_mask"].bool()
    if objective == MLM:
        if mask_token_id is None:
            raise ValueError("a masked LM needs a [MASK] token")
        target = choose_masked_positions(eligible, window_ids, seed, mask_prob)
        model_ids = ids.masked_fill(target, mask_token_id)
        labels = ids[target]
    else:
        # logits at position t predict token t+1
        target = torch.zeros_like(eligible)
        target[:, :-1] = eligible[:, 1:]
        model_ids = ids
        labels = ids[:, 1:][eligible[:, 1:]]
    return EvalBatch(window_ids, model_ids, attn, target, labels)


def batches(window_texts: Sequence[str], tokenizer, seq_len: int, objective: str, seed: int,
            mask_prob: float, batch_size: int, rank: int = 0, world: int = 1,
            limit: int | None = None, start_batch: int = 0,
            whole_batches: bool = False) -> Iterator[EvalBatch]:
    """Batches of this process's share of the windows (the first ``limit`` windows if given),
    from its ``start_batch``-th batch on (a resumed pass skips what it has done, unread).

    The share is window ``i`` for ``i mod world == rank``; with ``whole_batches``, the
    single-process batches themselves are dealt (batch ``b`` for ``b mod world == rank``), for
    sums over batches that depend on which windows share one (the batch Fisher estimator)."""
    from fmaudit.tokenizer import encode_windows

    n = len(window_texts) if limit is None else min(limit, len(window_texts))
    if whole_batches:
        groups = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
        mine_batches = groups[rank::world]
    else:
        mine = list(range(rank, n, world))
        mine_batches = [mine[s:s + batch_size] for s in range(0, len(mine), batch_size)]
    for idx in mine_batches[start_batch:]:
        encoded = encode_windows(tokenizer, [window_texts[i] for i in idx], seq_len)
        yield make_batch(encoded, torch.tensor(idx, dtype=torch.long), objective, seed, mask_prob,
                         tokenizer.mask_token_id)
