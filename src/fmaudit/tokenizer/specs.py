"""Tokenizer specs: ``kmer:6``, ``kmer`` (= 6), ``bpe:4101``, ``bpe`` (= 4101), ``char``."""

from __future__ import annotations

from dataclasses import dataclass

from fmaudit.errors import FmauditError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in every vocabulary
DEFAULT_K = 6
DEFAULT_BPE = 4101  # 4^6 k-mers + 5 specials: BPE matched to the 6-mer vocabulary size
MAX_K = 8  # 4^8 = 65,536 k-mers
MAX_BPE = 1 << 18
KINDS = ("kmer", "bpe", "char")


@dataclass(frozen=True)
class TokenizerSpec:
    """A parsed spec; ``size`` is k for k-mers, the vocabulary size for BPE, None for char."""

    kind: str
    size: int | None = None

    def __str__(self) -> str:
        return self.kind if self.size is None else f"{self.kind}:{self.size}"


def parse_spec(spec: str) -> TokenizerSpec:
    """Parse a tokenizer spec; errors name ``--tokenizer`` and list the valid forms."""
    usage = "use kmer:K (1-8), bpe:SIZE or char; e.g. kmer:6, bpe:4101"
    text = str(spec).strip().lower()
    kind, sep, arg = text.partition(":")
    if kind not in KINDS:
        raise FmauditError(f"--tokenizer {spec!r}: unknown tokenizer ({usage})")
    if kind == "char":
        if sep:
            raise FmauditError(f"--tokenizer {spec!r}: char takes no size ({usage})")
        return TokenizerSpec("char")
    if not sep:
        return TokenizerSpec(kind, DEFAULT_K if kind == "kmer" else DEFAULT_BPE)
    try:
        size = int(arg)
    except ValueError:
        raise FmauditError(f"--tokenizer {spec!r}: {arg!r} is not an integer ({usage})") from None
    if kind == "kmer" and not 1 <= size <= MAX_K:
        raise FmauditError(f"--tokenizer {spec!r}: k must be between 1 and {MAX_K} ({usage})")
    if kind == "bpe" and not len(SPECIAL_TOKENS) + 5 <= size <= MAX_BPE:
        raise FmauditError(f"--tokenizer {spec!r}: BPE vocabulary size must be between "
                           f"{len(SPECIAL_TOKENS) + 5} and {MAX_BPE} ({usage})")
    return TokenizerSpec(kind, size)
