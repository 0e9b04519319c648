"""Window encoding: fixed-length batches, window_chars filling seq_len, [UNK] share, fit check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmaudit.corpus import CorpusOptions, bundled, open_corpus
from fmaudit.errors import FmauditError
from fmaudit.tokenizer import (
    build_tokenizer,
    check_tokenizer_fits,
    encode_windows,
    token_ids,
    unk_fraction,
    window_chars,
)


@pytest.fixture(scope="module")
def dna():
    return open_corpus(bundled("dna"))


@pytest.fixture(scope="module")
def text():
    return open_corpus(bundled("text"))


def test_encode_layout() -> None:
    tok = build_tokenizer("kmer:2")
    batch = encode_windows(tok, ["ACGT", "ACGTACGTAC" * 3, "NNAC"], 6)
    assert set(batch) == {"input_ids", "attention_mask", "special_tokens_mask"}
    for t in batch.values():
        assert t.dtype == torch.long and t.shape == (3, 6)
    ids, attn, special = batch["input_ids"], batch["attention_mask"], batch["special_tokens_mask"]
    # row 0: [CLS] AC GT [SEP] [PAD] [PAD]
    assert tok.convert_ids_to_tokens(ids[0]) == ["[CLS]", "AC", "GT", "[SEP]", "[PAD]", "[PAD]"]
    assert attn[0].tolist() == [1, 1, 1, 1, 0, 0] and special[0].tolist() == [1, 0, 0, 1, 1, 1]
    # row 1 is truncated but still ends with [SEP]
    assert ids[1, 0] == tok.cls_token_id and ids[1, -1] == tok.sep_token_id
    assert attn[1].all()
    assert tok.convert_ids_to_tokens(ids[2, 1:3]) == ["[UNK]", "AC"]
    empty = encode_windows(tok, [], 6)
    assert empty["input_ids"].shape == (0, 6)
    with pytest.raises(FmauditError, match="--seq-len"):
        encode_windows(tok, ["ACGT"], 2)


def test_unk_fraction_counts_by_hand() -> None:
    tok = build_tokenizer("kmer:2")
    batch = encode_windows(tok, ["ACNNGT", "NA", "ACGTAC"], 8)
    ids = batch["input_ids"].tolist()
    regular = unk = 0
    for row in ids:
        for t in row:
            if t not in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id):
                regular += 1
                unk += t == tok.unk_token_id
    assert unk_fraction(tok, batch) == pytest.approx(unk / regular) == pytest.approx(2 / 7)
    assert math.isnan(unk_fraction(tok, encode_windows(tok, ["A"], 4)))  # no regular token


@pytest.mark.parametrize(("spec", "seq_len"), [("kmer:6", 64), ("kmer:3", 40), ("char", 50)])
def test_fixed_tokenizers_fill_seq_len_exactly(dna, spec: str, seq_len: int) -> None:
    tok = build_tokenizer(spec)
    length = window_chars(tok, seq_len, dna)
    k = int(spec.split(":")[1]) if ":" in spec else 1
    assert length == (seq_len - 2) * k
    windows = dna.windows("holdout", length, n=16, seed=0)
    batch = encode_windows(tok, [w.text for w in windows], seq_len)
    assert batch["attention_mask"].all()  # full, no padding, nothing truncated away
    assert unk_fraction(tok, batch) == 0.0


@pytest.mark.parametrize("which", ["dna", "text"])
def test_bpe_window_chars_fill_seq_len(which: str, dna, text) -> None:
    corpus = dna if which == "dna" else text
    tok = build_tokenizer("bpe:1000", corpus)
    seq_len = 48
    length = window_chars(tok, seq_len, corpus)
    assert length == window_chars(tok, seq_len, corpus)  # seeded estimate: deterministic
    windows = corpus.windows("holdout", length, n=24, seed=0)
    full = encode_windows(tok, [w.text for w in windows], seq_len)["attention_mask"].all(dim=1)
    assert full.float().mean() >= 0.9
    # and not wastefully long: well under twice the characters the tokens hold on average
    ids = tok([w.text for w in windows], add_special_tokens=False)["input_ids"]
    mean_chars_per_token = np.mean([len(w.text) / len(i)
                                    for w, i in zip(windows, ids, strict=True)])
    assert length < 2 * (seq_len - 2) * mean_chars_per_token


def test_check_tokenizer_fits(dna, text) -> None:
    assert check_tokenizer_fits(build_tokenizer("kmer:6"), dna) == 0.0
    assert check_tokenizer_fits(build_tokenizer("kmer:6"), text) > 0.95  # k-mers of English
    assert check_tokenizer_fits(build_tokenizer("char"), text) > 0.5
    assert check_tokenizer_fits(build_tokenizer("char", text), text) == 0.0


def test_window_chars_without_a_train_split(make_fasta) -> None:
    rng = np.random.default_rng(9)
    path = make_fasta({n: "".join(rng.choice(list("ACGT"), 3000)) for n in ("a", "b")})
    tok = build_tokenizer("bpe:300", open_corpus(path))
    held_out = open_corpus(path, CorpusOptions(holdout="a,b"))  # evaluation-only options
    assert window_chars(tok, 32, held_out) == window_chars(
        tok, 32, open_corpus(path, CorpusOptions(holdout="0")))
    assert check_tokenizer_fits(tok, held_out) == 0.0


def test_encoding_state_does_not_leak(dna) -> None:
    # encode_windows leaves truncation/padding in the fast backend; later raw counts ignore it
    tok = build_tokenizer("bpe:800", dna)
    text = dna.windows("train", 3000, n=1, seed=0)[0].text
    before = token_ids(tok, [text])
    chars = window_chars(tok, 40, dna)
    encode_windows(tok, [text], 16)
    assert token_ids(tok, [text]) == before and len(before[0]) > 16
    assert window_chars(tok, 40, dna) == chars
    assert tok.backend_tokenizer.truncation["max_length"] == 16  # the caller's state, restored
    from fmaudit.corpus.stats import corpus_stats

    fresh = corpus_stats(dna, build_tokenizer("bpe:800", dna))
    assert corpus_stats(dna, tok)["tokens"] == fresh["tokens"]


@pytest.mark.parametrize("spec", ["bpe:300", "char"])
def test_special_token_names_in_text_are_text(text, spec: str, tmp_path) -> None:
    """Prose that writes "[MASK]" or "[SEP]" is encoded as its characters: a special token
    only comes from the post-processor ([CLS], [SEP]) or the masking, by id; so after a save
    and reload too."""
    from transformers import AutoTokenizer

    tok = build_tokenizer(spec, text)
    tok.save_pretrained(tmp_path / "tok")
    sentence = "BERT replaces a word by [MASK], pads with [PAD] and ends with [SEP]."
    for t in (tok, AutoTokenizer.from_pretrained(tmp_path / "tok")):
        ids = token_ids(t, [sentence])[0]
        assert not set(ids) & set(range(5))  # none of [PAD] [UNK] [CLS] [SEP] [MASK]
        batch = encode_windows(t, [sentence], 128)
        real = batch["attention_mask"][0].bool()
        assert batch["special_tokens_mask"][0][real].tolist() == [1] + [0] * len(ids) + [1]
        assert batch["input_ids"][0][real].tolist() == [2, *ids, 3]
