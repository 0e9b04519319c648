"""Window encoding: characters per window, batch encoding to fixed length, [UNK] share."""

from __future__ import annotations

import math
from typing import Any

from fmaudit.errors import FmauditError
from fmaudit.tokenizer.build import describe

# BPE windows are cut this much longer than the estimate; truncation drops the excess
BPE_MARGIN = 1.25
BPE_SAMPLE_WINDOWS = 64
BPE_SAMPLE_CHARS = 2048


def _check_seq_len(seq_len: int) -> int:
    if not isinstance(seq_len, int) or seq_len < 3:
        raise FmauditError(f"--seq-len: must be an integer >= 3 ([CLS], a token, [SEP]), "
                           f"got {seq_len!r}")
    return seq_len


def encode_windows(tok: Any, texts: list[str], seq_len: int) -> dict[str, Any]:
    """Encode windows as ``[CLS] tokens... [SEP] [PAD]...``, truncated/padded to ``seq_len``.

    Returns:
        ``{"input_ids", "attention_mask", "special_tokens_mask"}``: LongTensor ``[B, seq_len]``;
        ``special_tokens_mask`` is 1 on [CLS], [SEP] and padding.
    """
    import torch

    seq_len = _check_seq_len(seq_len)
    if not texts:
        empty = torch.zeros((0, seq_len), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone(),
                "special_tokens_mask": empty.clone()}
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=seq_len,
              return_attention_mask=True, return_special_tokens_mask=True, return_tensors="pt")
    return {key: enc[key].long() for key in ("input_ids", "attention_mask", "special_tokens_mask")}


def token_ids(tok: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text without specials, truncation or padding.

    A fast tokenizer keeps the truncation/padding settings of its last ``tok(...)`` call in its
    backend (``encode_windows`` leaves ``max_length=seq_len`` there), so the backend is switched
    to plain encoding for this call and its settings are restored afterwards.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer
        return tok(list(texts), add_special_tokens=False, truncation=False,
                   padding=False)["input_ids"]
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)


def unk_fraction(tok: Any, batch: dict[str, Any]) -> float:
    """Share of ``[UNK]`` among the regular (non-special, non-padding) tokens of a batch.

    ``#{input_ids == unk_id, attention 1, not special} / #{attention 1, not special}``;
    NaN when the batch has no regular token.
    """
    ids = batch["input_ids"]
    regular = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
    total = int(regular.sum())
    if total == 0:
        return math.nan
    return int(((ids == tok.unk_token_id) & regular).sum()) / total


def _sample_texts(corpus: Any, length: int, n: int, seed: int) -> list[str]:
    """Up to ``n`` seeded windows of at most ``length`` characters (shorter when the corpus's
    stretches are short) from the train split, or the whole corpus when it has no train split
    (e.g. every selected contig held out for evaluation)."""
    split = "train" if corpus.intervals("train") else "all"
    length = min(length, max(len(iv) for iv in corpus.intervals(split)))
    texts: list[str] = []
    while length >= 1 and not texts:
        texts = [w.text for w in corpus.windows(split, length, n=n, seed=seed, allow_fewer=True)]
        length //= 2
    return texts


def chars_per_token(tok: Any, corpus: Any, seed: int = 0) -> float:
    """Characters per regular token on a seeded sample of the corpus train split (all of the
    corpus when it has no train split)."""
    texts = _sample_texts(corpus, BPE_SAMPLE_CHARS, BPE_SAMPLE_WINDOWS, seed)
    if not texts:
        raise FmauditError(f"{corpus.path}: no clean train window to measure tokens on "
                           "(check --max-n / --regions)")
    chars = sum(len(t) for t in texts)
    # through the backend: whole samples, and no "longer than model_max_length" warning
    tokens = sum(len(ids) for ids in token_ids(tok, texts))
    return chars / max(tokens, 1)


def window_chars(tok: Any, seq_len: int, corpus: Any) -> int:
    """Characters to cut per window so that its encoding fills ``seq_len`` tokens.

    k-mer: ``(seq_len - 2) * k``; char: ``seq_len - 2``; BPE and foreign tokenizers:
    ``ceil((seq_len - 2) * r * 1.25)`` with ``r`` the characters per token measured on a
    seeded sample of the train split (truncation trims the excess).
    """
    seq_len = _check_seq_len(seq_len)
    spec = describe(tok)
    if spec is not None and spec.kind == "kmer":
        assert spec.size is not None
        return (seq_len - 2) * spec.size
    if spec is not None and spec.kind == "char":
        return seq_len - 2
    r = chars_per_token(tok, corpus)
    return max(seq_len - 2, math.ceil((seq_len - 2) * r * BPE_MARGIN))


def check_tokenizer_fits(tok: Any, corpus: Any, *, seq_len: int = 128, n: int = 32,
                         seed: int = 0) -> float:
    """``[UNK]`` share on ``n`` seeded train windows: near 0 when the tokenizer fits the corpus
    alphabet, near 1 for e.g. a k-mer tokenizer on English text (the caller sets the bar)."""
    length = window_chars(tok, seq_len, corpus)
    texts = _sample_texts(corpus, length, n, seed)
    if not texts:
        raise FmauditError(
            f"{corpus.path}: no clean train window of {length:,} characters to check the "
            f"tokenizer on (the train split holds {corpus.length('train'):,} characters with "
            f"--holdout {corpus.options.holdout}; hold out less, or use a shorter --seq-len)")
    return unk_fraction(tok, encode_windows(tok, texts, seq_len))
