"""The training data stream: a pure function of (corpus, tokenizer, recipe, data seed, step).

Global batch ``s`` holds the samples ``s*B .. s*B+B-1`` (B = the recipe's global batch). Sample
``i`` is

* tiled mode (corpora whose train split fits in memory as windows): window ``perm_e[i mod n]`` of
  the ``n`` non-overlapping train windows, where ``e = i div n`` is the epoch and ``perm_e`` a
  permutation drawn from (data seed, e);
* sampled mode (large corpora such as hg38): the windows that ``corpus.windows("train", n=B,
  seed=f(data seed, s))`` draws for that step, so no more than one batch of text is ever held.

Masks and BERT's 80/10/10 corruption come from per-sample generators keyed by (data seed, i)
(:mod:`fmaudit.passes.masking`). Hence every ensemble member, any process count and a resumed
run see the same windows with the same masks, and the stream can restart at any step without
replaying earlier ones. Each process takes a contiguous shard of each accumulation micro-batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fmaudit.errors import FmauditError
from fmaudit.passes.masking import bert_corruption, choose_masked_positions

IGNORE = -100
# Salts keep the generators of different uses of one seed apart.
_ORDER_SALT = 0x0D0E
_SAMPLE_SALT = 0x5A3
_MASK_SALT = 0  # masks at train time (eval uses EVAL_SEED with the audit's salt, 0)
EVAL_SEED = 0  # held-out windows and their masks are the same for every member and data seed
# Train splits up to this many tokens are encoded once and tiled; larger ones are sampled.
TILE_MAX_TOKENS = 16 * 2**20

Encoded = dict[str, torch.Tensor]  # input_ids / attention_mask / special_tokens_mask [N, L]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, through numpy's SeedSequence (no collisions by addition)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def regular_token_range(tokenizer: Any) -> tuple[int, int]:
    """``(first_regular_id, n_regular)``: the contiguous block of non-special ids.

    BERT's 10% random replacement draws from this block. Our tokenizers put the specials first
    (or last); anything else is refused rather than silently sampling specials.
    """
    vocab = len(tokenizer)
    special = sorted({int(i) for i in tokenizer.all_special_ids})
    if not special:
        return 0, vocab
    if special == list(range(len(special))):
        return len(special), vocab - len(special)
    if special == list(range(vocab - len(special), vocab)):
        return 0, vocab - len(special)
    raise ValueError(f"special token ids {special} are not a prefix or suffix of the vocabulary")


@dataclass(frozen=True)
class LabelRule:
    """How token windows become model inputs and labels for one objective."""

    objective: str  # "mlm" | "clm"
    mask_prob: float
    mask_token_id: int | None
    first_regular_id: int
    n_regular: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, objective: str, mask_prob: float) -> LabelRule:
        first, n = regular_token_range(tokenizer)
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if objective == "mlm" and mask_id is None:
            raise FmauditError("tokenizer: has no [MASK] token, which a masked LM needs "
                               "(use objective = \"clm\" or another tokenizer)")
        return cls(objective, mask_prob, mask_id, first, n)

    def train_inputs(self, enc: Encoded, sample_ids: torch.Tensor, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` ``[B, L]`` for training.

        mlm: ``mask_prob`` of the eligible (non-special, non-pad) positions, chosen by
        ``choose_masked_positions``; 80% -> [MASK], 10% -> random regular token, 10% unchanged;
        labels = original id there, -100 elsewhere.
        clm: inputs unchanged; labels = id at eligible positions (the loss shifts them by one).
        """
        ids = enc["input_ids"]
        eligible = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        if self.objective == "clm":
            return ids, ids.masked_fill(~eligible, IGNORE)
        masked = choose_masked_positions(eligible, sample_ids, seed, self.mask_prob, _MASK_SALT)
        return bert_corruption(ids, masked, sample_ids, seed, int(self.mask_token_id),
                               self.n_regular, self.first_regular_id, salt=_MASK_SALT)

    def eval_inputs(self, enc: Encoded, window_ids: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out inputs as ``fmaudit report`` builds them: every masked position -> [MASK]."""
        ids = enc["input_ids"]
        eligible = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        if self.objective == "clm":
            return ids, ids.masked_fill(~eligible, IGNORE)
        masked = choose_masked_positions(eligible, window_ids, EVAL_SEED, self.mask_prob)
        return ids.masked_fill(masked, int(self.mask_token_id)), ids.masked_fill(~masked, IGNORE)


def count_targets(labels: torch.Tensor, objective: str) -> int:
    """Loss terms in a batch: labelled positions (mlm) or labelled next tokens (clm)."""
    lab = labels[:, 1:] if objective == "clm" else labels
    return int((lab != IGNORE).sum())


@dataclass
class GlobalBatch:
    """One optimiser step's data, identical on every process."""

    step: int
    sample_ids: torch.Tensor  # [B] global sample index i = step*B + j (keys the masks)
    input_ids: torch.Tensor  # [B, L] model input (corrupted for mlm)
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L] -100 where there is no loss term
    n_targets: int  # loss terms in the whole global batch (the loss denominator)
    n_tokens: int  # non-pad tokens in the whole global batch

    def digest_bytes(self) -> bytes:
        """Canonical bytes of what the model saw: ids (int32 LE), attention (u8), labels."""
        return b"".join((
            self.input_ids.to(torch.int32).numpy().astype("<i4").tobytes(),
            self.attention_mask.to(torch.uint8).numpy().tobytes(),
            self.labels.to(torch.int32).numpy().astype("<i4").tobytes(),
        ))

    def shard(self, micro: int, accum: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        """Rows of micro-batch ``micro`` that process ``rank`` computes (contiguous block)."""
        b = self.input_ids.shape[0]
        per = b // (accum * world)
        start = micro * (b // accum) + rank * per
        rows = slice(start, start + per)
        return {"input_ids": self.input_ids[rows], "attention_mask": self.attention_mask[rows],
                "labels": self.labels[rows]}


class StreamFingerprint:
    """Chained sha256 over the global batches in order: ``h_s = sha256(h_{s-1} || bytes_s)``.

    Resumable (the state is one hex string) and equal across members of a matched ensemble.
    """

    START = hashlib.sha256(b"fmaudit data stream v1").hexdigest()

    def __init__(self, state: str | None = None) -> None:
        self.state = state or self.START

    def update(self, batch: GlobalBatch) -> None:
        self.state = hashlib.sha256(bytes.fromhex(self.state) + batch.digest_bytes()).hexdigest()

    def value(self) -> str:
        return "sha256:" + self.state


class TrainStream:
    """Global batches as a pure function of the step (see the module docstring).

    Args:
        take: ``take(step, sample_ids) -> Encoded`` returns the encoded windows of those samples.
        batch_size: global batch size B.
        rule: the objective's input/label rule.
        data_seed: keys the masks (and, through ``take``, the order).
        mode: "tiled" or "sampled" (recorded in manifests).
    """

    def __init__(self, take: Callable[[int, torch.Tensor], Encoded], batch_size: int,
                 rule: LabelRule, data_seed: int, mode: str, n_windows: int | None) -> None:
        self.take = take
        self.batch_size = batch_size
        self.rule = rule
        self.data_seed = data_seed
        self.mode = mode
        self.n_windows = n_windows
        self.chunk_steps: int | None = None  # sampled mode: steps drawn together

    def global_batch(self, step: int) -> GlobalBatch:
        b = self.batch_size
        sample_ids = torch.arange(step * b, (step + 1) * b, dtype=torch.long)
        enc = self.take(step, sample_ids)
        inputs, labels = self.rule.train_inputs(enc, sample_ids, self.data_seed)
        return GlobalBatch(step, sample_ids, inputs, enc["attention_mask"], labels,
                           count_targets(labels, self.rule.objective),
                           int(enc["attention_mask"].sum()))

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "train_windows": self.n_windows, "data_seed": self.data_seed,
                "chunk_steps": self.chunk_steps,
                "order": "epoch permutations of the train windows" if self.mode == "tiled"
                else "windows drawn per step from the train split"}


def tiled_stream(encoded: Encoded, batch_size: int, rule: LabelRule, data_seed: int
                 ) -> TrainStream:
    """Epochs over a fixed set of encoded windows, each epoch in its own seeded order."""
    n = int(encoded["input_ids"].shape[0])
    if n == 0:
        raise ValueError("no windows")
    perms: dict[int, torch.Tensor] = {}

    def perm(epoch: int) -> torch.Tensor:
        if epoch not in perms:
            if len(perms) > 4:  # only the current epochs are ever needed
                perms.clear()
            gen = torch.Generator().manual_seed(derive_seed(data_seed, epoch, _ORDER_SALT))
            perms[epoch] = torch.randperm(n, generator=gen)
        return perms[epoch]

    def take(step: int, sample_ids: torch.Tensor) -> Encoded:
        epochs = (sample_ids // n).tolist()
        offsets = sample_ids % n
        rows = torch.stack([perm(e)[o] for e, o in zip(epochs, offsets.tolist(), strict=True)])
        return {k: v[rows].long() for k, v in encoded.items()}  # stored compact, used as long

    return TrainStream(take, batch_size, rule, data_seed, "tiled", n)


def sampled_stream(draw: Callable[[int, int], list[str]],
                   encode: Callable[[list[str]], Encoded], batch_size: int, rule: LabelRule,
                   data_seed: int, chunk_steps: int = 64) -> TrainStream:
    """Windows drawn from the corpus, ``chunk_steps`` steps' worth at a time.

    Chunk ``c`` (steps ``c*K .. c*K+K-1``) is ``draw(K*B, derive_seed(data seed, c))``: K*B
    distinct windows (e.g. ``corpus.windows("train", length, n, seed)``, whose cost is mostly
    a permutation of the whole grid, so it is paid once per chunk); step s takes its slice.
    Only one chunk of text is held at a time.
    """
    cache: dict[int, list[str]] = {}

    def take(step: int, sample_ids: torch.Tensor) -> Encoded:
        chunk, offset = divmod(step, chunk_steps)
        if chunk not in cache:
            cache.clear()
            cache[chunk] = draw(chunk_steps * batch_size,
                                derive_seed(data_seed, chunk, _SAMPLE_SALT))
        texts = cache[chunk][offset * batch_size:(offset + 1) * batch_size]
        if len(texts) != len(sample_ids):
            raise FmauditError(f"corpus: drew {len(texts)} windows for step {step}, expected "
                               f"{len(sample_ids)} (the train split is too small for sampling)")
        return encode(texts)

    stream = TrainStream(take, batch_size, rule, data_seed, "sampled", None)
    stream.chunk_steps = chunk_steps
    return stream


@dataclass
class EvalSet:
    """Held-out windows, encoded and masked once: the same for every member and step."""

    input_ids: torch.Tensor  # [E, L]
    attention_mask: torch.Tensor  # [E, L]
    labels: torch.Tensor  # [E, L]

    @classmethod
    def build(cls, encoded: Encoded, rule: LabelRule) -> EvalSet:
        n = encoded["input_ids"].shape[0]
        inputs, labels = rule.eval_inputs(encoded, torch.arange(n, dtype=torch.long))
        return cls(inputs, encoded["attention_mask"], labels)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batches(self, per_process: int, rank: int, world: int
                ) -> list[dict[str, torch.Tensor]]:
        """This process's eval batches; every process gets the same NUMBER of batches.

        Chunk k holds rows ``[k*per*world, (k+1)*per*world)``; a process with no rows left in
        the last chunk gets a copy of row 0 with all labels -100 (contributes nothing), so
        sharded models (FSDP) run the same number of forwards on every process.
        """
        n = len(self)
        chunk = per_process * world
        out = []
        for start in range(0, n, chunk):
            lo = min(start + rank * per_process, n)
            hi = min(lo + per_process, n)
            if hi > lo:
                rows = slice(lo, hi)
                out.append({"input_ids": self.input_ids[rows],
                            "attention_mask": self.attention_mask[rows],
                            "labels": self.labels[rows]})
            else:
                out.append({"input_ids": self.input_ids[:1],
                            "attention_mask": self.attention_mask[:1],
                            "labels": torch.full_like(self.labels[:1], IGNORE)})
        return out
