"""Tokenizers (k-mer, BPE, char) as transformers fast tokenizers, and window encoding.

>>> from fmaudit.tokenizer import build_tokenizer, encode_windows
>>> tok = build_tokenizer("kmer:3")
>>> encode_windows(tok, ["ACGTTT"], 5)["input_ids"].tolist()
[[2, 11, 68, 3, 0]]
"""

from __future__ import annotations

from fmaudit.tokenizer.build import (
    build_tokenizer,
    tokenizer_alphabet_of,
    tokenizer_spec_of,
)
from fmaudit.tokenizer.encode import (
    chars_per_token,
    check_tokenizer_fits,
    encode_windows,
    token_ids,
    unk_fraction,
    window_chars,
)
from fmaudit.tokenizer.specs import (
    DEFAULT_BPE,
    DEFAULT_K,
    SPECIAL_TOKENS,
    TokenizerSpec,
    parse_spec,
)

__all__ = [
    "DEFAULT_BPE",
    "DEFAULT_K",
    "SPECIAL_TOKENS",
    "TokenizerSpec",
    "build_tokenizer",
    "chars_per_token",
    "check_tokenizer_fits",
    "default_spec",
    "encode_windows",
    "parse_spec",
    "token_ids",
    "tokenizer_alphabet_of",
    "tokenizer_spec_of",
    "unk_fraction",
    "window_chars",
]


def default_spec(kind: str) -> str:
    """The default tokenizer for a corpus kind: ``kmer:6`` for DNA, ``bpe:4101`` for text."""
    return f"kmer:{DEFAULT_K}" if kind == "dna" else f"bpe:{DEFAULT_BPE}"
