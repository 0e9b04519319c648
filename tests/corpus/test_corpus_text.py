"""Text corpora: documents, stream-end holdout, the same windowing API, bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from fmaudit.corpus import CorpusOptions, bundled, open_corpus
from fmaudit.errors import FmauditError

DOCS = [d.strip() for d in (  # documents lose trailing whitespace when read
    "The first document.\nIt has two lines, and Ünïcode.",
    "Second document " * 20,
    "Third: a short one.",
    "Fourth document closes the stream " * 10,
)]


def test_documents_split_on_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffa b  \r\nc\r\n\r\n\r\n  \nsecond\n\n\n\nthird \n".encode())
    c = open_corpus(path)
    assert c.kind == "text" and c.records == ["doc1", "doc2", "doc3"]
    assert [c.read(r, 0, 100) for r in c.records] == ["a b\nc", "second", "third"]


def test_windows_stay_inside_documents(make_text) -> None:
    c = open_corpus(make_text(DOCS), CorpusOptions(holdout="0"))
    ws = c.windows("all", 25)
    expected = [(f"doc{i + 1}", s, d[s:s + 25]) for i, d in enumerate(DOCS)
                for s in range(0, len(d) - 24, 25)]
    assert [(w.record, w.start, w.text) for w in ws] == expected
    # case is kept for text, whatever keep_case says
    assert ws[0].text == DOCS[0][:25]


def test_holdout_comes_from_the_end_of_the_stream(make_text) -> None:
    c = open_corpus(make_text(DOCS), CorpusOptions(holdout="0.3"))
    total = sum(map(len, DOCS))
    held = int(total * 0.3)
    assert c.length("holdout") == held and c.length("train") == total - held
    ivs = c.intervals("holdout")
    assert ivs[-1].record == "doc4" and ivs[-1].end == len(DOCS[3])
    # contiguous: everything after the cut point is held out, in stream order
    train_ivs = c.intervals("train")
    assert train_ivs[-1].record == ivs[0].record or ivs[0].start == 0
    stream = "".join(c.read(iv.record, iv.start, iv.end) for iv in train_ivs + ivs)
    assert stream == "".join(DOCS)
    train = {(w.record, i) for w in c.windows("train", 10) for i in range(w.start, w.start + 10)}
    hold = {(w.record, i) for w in c.windows("holdout", 10) for i in range(w.start, w.start + 10)}
    assert train and hold and not train & hold


def test_sampled_text_windows_deterministic(make_text) -> None:
    path = make_text(DOCS)
    a = open_corpus(path).windows("train", 12, n=10, seed=5)
    assert a == open_corpus(path).windows("train", 12, n=10, seed=5)
    assert len(a) == 10 and a != open_corpus(path).windows("train", 12, n=10, seed=6)


def test_gzip_text_equals_plain(make_text, tmp_path: Path) -> None:
    plain = make_text(DOCS)
    gz = tmp_path / "corpus.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = open_corpus(plain), open_corpus(gz)
    assert b.name == "corpus" and b.kind == "text"
    assert a.windows("all", 20) == b.windows("all", 20)


def test_kind_is_sniffed_without_extension(tmp_path: Path) -> None:
    (tmp_path / "seqs").write_text(">x\nACGTACGT\n")
    (tmp_path / "prose").write_text("Hello world.\n")
    assert open_corpus(tmp_path / "seqs").kind == "dna"
    assert open_corpus(tmp_path / "prose").kind == "text"


@pytest.mark.parametrize(("options", "needle"), [
    (CorpusOptions(holdout="doc1"), "contig names apply to FASTA only"),
    (CorpusOptions(regions=("doc1",)), "--regions"),
    (CorpusOptions(reverse_complement=True), "--reverse-complement"),
])
def test_dna_only_options_are_errors_for_text(make_text, options, needle: str) -> None:
    with pytest.raises(FmauditError, match=needle):
        open_corpus(make_text(DOCS), options)


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "empty"),
    (b"\n \n\t\n", "empty"),
    (b"caf\xe9 latin-1\n", "not UTF-8: invalid byte at offset 3"),
    (b"text\x00with a NUL\n", "binary data"),
])
def test_bad_text(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(FmauditError) as err:
        open_corpus(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_bundled_text_is_prose_with_enough_windows() -> None:
    c = open_corpus(bundled("text"))
    assert c.kind == "text" and c.bundled == "text" and len(c.records) >= 10
    assert 100_000 <= c.length() <= 400_000
    assert len(c.windows("train", 500)) >= 200 and len(c.windows("holdout", 500)) >= 20
    text = c.read("doc2", 0, 2000)
    assert text.count(" ") > 200 and "Debian" in text
