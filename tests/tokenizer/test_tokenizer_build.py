"""Tokenizer construction: vocabularies, specs, save/reload round trips, BPE determinism."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from fmaudit.corpus import CorpusOptions, bundled, open_corpus
from fmaudit.errors import FmauditError
from fmaudit.tokenizer import (
    SPECIAL_TOKENS,
    build_tokenizer,
    parse_spec,
    tokenizer_alphabet_of,
    tokenizer_spec_of,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _kmer_reference(text: str, k: int) -> list[str]:
    """Slow reference: whitespace out, acgt folded, non-overlapping k-mers, short tail dropped."""
    s = "".join(text.split())
    s = "".join(c.upper() if c in "acgtn" else c for c in s)
    out = []
    for i in range(0, len(s) - k + 1, k):
        piece = s[i:i + k]
        out.append(piece if set(piece) <= set("ACGT") else "[UNK]")
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_kmer_vocabulary_order(k: int) -> None:
    tok = build_tokenizer(f"kmer:{k}")
    vocab = tok.get_vocab()
    assert len(tok) == len(vocab) == 4**k + 5
    for i, special in enumerate(SPECIAL_TOKENS):
        assert vocab[special] == i
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    assert [vocab[m] for m in kmers] == list(range(5, 5 + 4**k))
    assert sorted(kmers) == kmers  # lexicographic ACGT order
    assert set(tok.all_special_ids) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("text", [
    "ACGTACGTAC", "acgtNNACGTAAAAcc", "ACG TAC\nGTA", "ACGRYACGT", "GATTACAX", "AC", "",
])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_kmer_tokens_match_reference(text: str, k: int) -> None:
    tok = build_tokenizer(f"kmer:{k}")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == _kmer_reference(text, k)
    full = tok(text)["input_ids"]
    assert full[0] == tok.cls_token_id and full[-1] == tok.sep_token_id and full[1:-1] == ids


def test_char_tokenizers(make_text) -> None:
    dna = build_tokenizer("char")
    assert tok_list(dna) == [*SPECIAL_TOKENS, "A", "C", "G", "T", "N"]
    assert dna.convert_ids_to_tokens(dna("acgTNR", add_special_tokens=False)["input_ids"]) == \
        ["A", "C", "G", "T", "N", "[UNK]"]
    docs = ["abc abd", "zzz é", "holdout only: QXW"]
    corpus = open_corpus(make_text(docs), CorpusOptions(holdout="0.4"))
    train_chars = sorted({ch for iv in corpus.intervals("train")
                          for ch in corpus.read(iv.record, iv.start, iv.end)})
    text_tok = build_tokenizer("char", corpus)
    assert tok_list(text_tok) == [*SPECIAL_TOKENS, *train_chars]
    assert tokenizer_alphabet_of(text_tok) == "text"
    ids = text_tok("ab Q", add_special_tokens=False)["input_ids"]
    assert text_tok.convert_ids_to_tokens(ids) == ["a", "b", " ", "[UNK]"]


def tok_list(tok) -> list[str]:
    return [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]


@pytest.mark.parametrize(("spec", "expected"), [
    ("kmer", "kmer:6"), ("KMER:3", "kmer:3"), (" bpe ", "bpe:4101"), ("bpe:300", "bpe:300"),
    ("char", "char"),
])
def test_parse_spec(spec: str, expected: str) -> None:
    assert str(parse_spec(spec)) == expected


@pytest.mark.parametrize("spec", ["kmer:0", "kmer:9", "kmer:x", "bpe:5", "char:3", "wordpiece", ""])
def test_bad_spec_names_the_flag(spec: str) -> None:
    with pytest.raises(FmauditError, match="--tokenizer"):
        build_tokenizer(spec)


def test_bpe_needs_a_corpus_and_enough_vocabulary(make_text) -> None:
    with pytest.raises(FmauditError, match="--tokenizer bpe:4101: BPE is trained on a corpus"):
        build_tokenizer("bpe")
    with pytest.raises(FmauditError, match="below the 261 tokens"):
        build_tokenizer("bpe:100", open_corpus(make_text(["some text here"] * 3)))


@pytest.fixture(scope="module")
def small_dna(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    seqs = {f"s{i}": "".join(rng.choice(list("ACGT"), 3000)) for i in range(3)}
    path = tmp_path_factory.mktemp("dna") / "small.fa"
    path.write_text("".join(f">{n}\n{s}\n" for n, s in seqs.items()))
    return path


@pytest.mark.parametrize("kind", ["dna", "text"])
def test_bpe_is_deterministic(kind: str, small_dna: Path, tmp_path: Path) -> None:
    path = small_dna if kind == "dna" else bundled("text")
    a = build_tokenizer("bpe:600", open_corpus(path))
    b = build_tokenizer("bpe:600", open_corpus(path))
    ja, jb = (json.loads(t.backend_tokenizer.to_str()) for t in (a, b))
    assert ja["model"]["vocab"] == jb["model"]["vocab"]
    assert ja["model"]["merges"] == jb["model"]["merges"]
    assert len(a) == 600 and tok_list(a)[:5] == list(SPECIAL_TOKENS)
    assert tokenizer_spec_of(a) == "bpe:600" and tokenizer_alphabet_of(a) == kind
    c = build_tokenizer("bpe:700", open_corpus(path))
    assert len(c) == 700 and set(tok_list(a)) < set(tok_list(c))  # BPE vocabularies nest
    if kind == "dna":
        assert all(set(t) <= set("ACGTN") for t in tok_list(a)[5:])


@pytest.mark.parametrize(
    "spec", ["kmer:6", "kmer:2", "char", "bpe:500", "char@text", "bpe:800@text"])
def test_save_and_reload_without_hub(spec: str, small_dna: Path, tmp_path: Path) -> None:
    spec, _, where = spec.partition("@")
    corpus = open_corpus(bundled("text") if where else small_dna)
    tok = build_tokenizer(spec, corpus, model_max_length=77)
    tok.save_pretrained(tmp_path / "tok")
    back = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer_spec_of(back) == str(parse_spec(spec))
    assert back.model_max_length == 77 and len(back) == len(tok)
    assert back.get_vocab() == tok.get_vocab()
    texts = ([w.text for w in corpus.windows("holdout", 120, n=5, seed=0)]
             + ["acgtNNNN acg", "Hello, wörld!"])
    assert back(texts)["input_ids"] == tok(texts)["input_ids"]
    assert back.mask_token_id == 4 and back.pad_token_id == 0 and back.unk_token_id == 1


def test_foreign_tokenizer_has_no_spec() -> None:
    class Foreign:
        def __init__(self) -> None:
            self.init_kwargs: dict = {"name_or_path": "some/hub-model"}

    assert tokenizer_spec_of(Foreign()) is None


def test_dna_char_tokenizer_folds_case_and_bpe_floor_is_exact() -> None:
    """Lowercase (soft-masked) bases, N included, are the uppercase tokens, never [UNK]; BPE
    needs exactly the specials plus the alphabet, no token fewer."""
    from fmaudit.tokenizer import token_ids

    tok = build_tokenizer("char", open_corpus(bundled("dna")))
    upper, lower = token_ids(tok, ["ACGTN", "acgtn"])
    assert upper == lower and tok.unk_token_id not in upper
    text = open_corpus(bundled("text"))
    with pytest.raises(FmauditError, match="below the 261 tokens"):
        build_tokenizer("bpe:260", text)
    assert len(build_tokenizer("bpe:261", text)) == 261
