"""k-mer, BPE and character tokenizers as ``transformers`` fast tokenizers.

Every tokenizer is a ``PreTrainedTokenizerFast`` wrapping a ``tokenizers.Tokenizer``, with the
specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0..4 and the regular tokens after them, a
post-processor that adds ``[CLS] ... [SEP]``, and the spec stored in its init kwargs
(``fmaudit_spec``), so ``save_pretrained(d)`` + ``AutoTokenizer.from_pretrained(d)`` gives back the
same tokenizer, offline, and ``tokenizer_spec_of`` says what it is.

* ``kmer:K``: non-overlapping K-mers; vocabulary = specials, then all 4^K K-mers in
  lexicographic ACGT order. Whitespace is removed and acgt uppercased first. A K-mer with N or
  any other letter is ``[UNK]``. A tail shorter than K is dropped (``window_chars`` cuts windows
  to a multiple of K, so only odd inputs have one).
* ``char``: one token per character. DNA: A C G T N (lowercase folded, whitespace removed,
  anything else ``[UNK]``). Text: every character seen in the train split, in code-point
  order (unseen characters are ``[UNK]``).
* ``bpe:SIZE``: byte-pair encoding trained with ``tokenizers`` on the corpus train split, to
  SIZE tokens including specials (fewer when the corpus runs out of pairs). DNA: alphabet
  A C G T N, N runs isolated before merging. Text: byte-level (GPT-2 style), so no ``[UNK]``.
  Training is deterministic: the same corpus and settings give the identical vocabulary.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from fmaudit.errors import FmauditError
from fmaudit.tokenizer.specs import SPECIAL_TOKENS, TokenizerSpec, parse_spec

DNA_ALPHABET = "ACGTN"
BPE_TRAIN_CHARS = 32 * 2**20  # larger train splits are sampled (seeded windows) for BPE training
BPE_DNA_PIECE = 1000  # DNA is fed to the BPE trainer in pieces of this many bases


def _specials_kwargs() -> dict[str, str]:
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    return {"pad_token": pad, "unk_token": unk, "cls_token": cls, "sep_token": sep,
            "mask_token": mask}


def _dna_normalizer() -> Any:
    from tokenizers import Regex, normalizers

    # whitespace out (FASTA line breaks), soft-masked lowercase folded to upper case
    return normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), "")]
                                + [normalizers.Replace(c, c.upper()) for c in "acgtn"])


def _post_processor() -> Any:
    from tokenizers import processors

    cls, sep = SPECIAL_TOKENS[2], SPECIAL_TOKENS[3]
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, SPECIAL_TOKENS.index(cls)), (sep, SPECIAL_TOKENS.index(sep))])


def _word_level(tokens: list[str]) -> Any:
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *tokens])}
    return Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[1]))


def kmer_backend(k: int) -> Any:
    """The ``tokenizers.Tokenizer`` for non-overlapping k-mers (see module docstring)."""
    from tokenizers import Regex, pre_tokenizers

    tk = _word_level(["".join(p) for p in itertools.product("ACGT", repeat=k)])
    tk.normalizer = _dna_normalizer()
    steps = [pre_tokenizers.Split(Regex(f".{{{k}}}"), behavior="isolated")]
    if k > 1:
        # the only piece shorter than k is the tail: remove it (anchors apply per piece)
        steps.append(pre_tokenizers.Split(Regex(f"^.{{1,{k - 1}}}$"), behavior="removed"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return tk


def char_backend(alphabet: list[str], dna: bool) -> Any:
    from tokenizers import Regex, pre_tokenizers

    tk = _word_level(alphabet)
    if dna:
        tk.normalizer = _dna_normalizer()
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return tk


def _train_texts(corpus: Any) -> Iterator[str]:
    """The train split as trainer input: all of it, or a seeded sample when it is large."""
    big = corpus.length("train") > BPE_TRAIN_CHARS
    if corpus.kind == "dna":
        if big:
            n = BPE_TRAIN_CHARS // BPE_DNA_PIECE
            for w in corpus.windows("train", BPE_DNA_PIECE, n=n, seed=0, allow_fewer=True):
                yield w.text
        else:
            for _, text in corpus.iter_chunks("train", chunk_size=BPE_DNA_PIECE):
                yield text
        return
    used = 0
    for _, text in corpus.iter_chunks("train", chunk_size=1 << 20):
        yield text
        used += len(text)
        if used >= BPE_TRAIN_CHARS:
            return


def bpe_backend(corpus: Any, vocab_size: int) -> Any:
    """Train a BPE ``tokenizers.Tokenizer`` on the corpus train split (see module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[1]))
    if corpus.kind == "dna":
        tk.normalizer = _dna_normalizer()
        tk.pre_tokenizer = pre_tokenizers.Split(Regex("N+"), behavior="isolated")
        alphabet = list(DNA_ALPHABET)
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    floor = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size < floor:
        raise FmauditError(f"--tokenizer bpe:{vocab_size}: below the {floor} tokens that the "
                           f"specials and the {corpus.kind} alphabet need "
                           f"(use bpe:{floor} or more)")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(_train_texts(corpus), trainer)
    return tk


def wrap(backend: Any, spec: str, alphabet: str, model_max_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` around ``backend``, remembering ``spec`` and ``alphabet``."""
    from transformers import PreTrainedTokenizerFast

    backend.post_processor = _post_processor()
    # split_special_tokens: a corpus that writes "[MASK]" or "[SEP]" (prose about BERT) is
    # text, not a mask or a separator; the specials come from the post-processor and the
    # masking, by id (saved in tokenizer_config.json, so reloaded tokenizers keep it)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length,
                                   fmaudit_spec=spec, fmaudit_alphabet=alphabet,
                                   split_special_tokens=True, **_specials_kwargs())


def build_tokenizer(spec: str, corpus: Any = None, *, model_max_length: int = 512) -> Any:
    """Build the tokenizer named by ``spec`` (``kmer:6``, ``bpe:4101``, ``char``, ...).

    Args:
        spec: tokenizer spec string (``fmaudit.tokenizer.specs.parse_spec``).
        corpus: a ``fmaudit.corpus.Corpus``; required for BPE (trained on its train split) and
            for ``char`` on text (alphabet = characters of its train split).
        model_max_length: stored on the tokenizer (the model's positions).

    Returns:
        a ``transformers.PreTrainedTokenizerFast``.

    Raises:
        FmauditError: invalid spec (naming ``--tokenizer``), BPE without a corpus.
    """
    parsed = parse_spec(spec)
    kind = corpus.kind if corpus is not None else "dna"
    if parsed.kind == "kmer":
        assert parsed.size is not None
        backend = kmer_backend(parsed.size)
        alphabet = "dna"
    elif parsed.kind == "char":
        if kind == "dna":
            backend = char_backend(list(DNA_ALPHABET), dna=True)
        else:
            seen: set[str] = set()
            for _, text in corpus.iter_chunks("train"):
                seen.update(text)
            backend = char_backend(sorted(seen), dna=False)
        alphabet = kind
    else:
        if corpus is None:
            raise FmauditError(f"--tokenizer {parsed}: BPE is trained on a corpus; give one "
                               "(build_tokenizer(spec, corpus))")
        assert parsed.size is not None
        backend = bpe_backend(corpus, parsed.size)
        alphabet = kind
    return wrap(backend, str(parsed), alphabet, model_max_length)


def tokenizer_spec_of(tok: Any) -> str | None:
    """The spec a tokenizer was built from (``"kmer:6"``...), or None for foreign tokenizers."""
    kwargs = getattr(tok, "init_kwargs", None) or {}
    spec = kwargs.get("fmaudit_spec")
    return str(spec) if spec else None


def tokenizer_alphabet_of(tok: Any) -> str | None:
    """``"dna"`` or ``"text"`` for fmaudit tokenizers, None for foreign ones."""
    kwargs = getattr(tok, "init_kwargs", None) or {}
    return kwargs.get("fmaudit_alphabet")


def describe(tok: Any) -> TokenizerSpec | None:
    spec = tokenizer_spec_of(tok)
    return parse_spec(spec) if spec else None
