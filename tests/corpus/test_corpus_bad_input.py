"""FASTA input that used to crash or mislead: blank lines, mis-named gzip, stale or corrupt
``.fai`` indexes, a held-out split that takes every contig. Each is accepted exactly or refused
with one FmauditError naming the file (and the line) and the fix."""

from __future__ import annotations

import gzip
import io
import os
import random
from pathlib import Path

import pyfaidx
import pytest

from fmaudit.cli import main
from fmaudit.corpus import CorpusOptions, open_corpus
from fmaudit.corpus import fasta as fasta_mod
from fmaudit.corpus.stats import corpus_stats
from fmaudit.errors import FmauditError

RNG = random.Random(3)
SEQS = {"a": "".join(RNG.choice("ACGT") for _ in range(1000)),  # last line short (40)
        "b": "".join(RNG.choice("ACGT") for _ in range(960)),  # last line full (60)
        "c": "".join(RNG.choice("ACGT") for _ in range(333))}


def _wrapped(seq: str, nl: str = "\n", width: int = 60) -> str:
    return nl.join(seq[i:i + width] for i in range(0, len(seq), width))


def _fasta(names: tuple[str, ...], between: str = "\n", tail: str = "\n", nl: str = "\n") -> str:
    return between.join(f">{n}{nl}{_wrapped(SEQS[n], nl)}" for n in names) + tail


def _windows(path: Path) -> list:
    c = open_corpus(path, CorpusOptions(holdout="0"))
    return [(n, c.read(n, 0, c.length("all"))) for n in c.records]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["-q", *argv])
    _, err = capsys.readouterr()
    return int(exc.value.code or 0), err


def _one_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fmaudit: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# ------------------------------------------------------------------ blank lines
@pytest.mark.parametrize("names", [("a",), ("b",), ("a", "b"), ("b", "a", "c")])
@pytest.mark.parametrize(("between", "tail", "nl"), [
    ("\n", "\n\n\n", "\n"),  # trailing blank lines: very common
    ("\n\n", "\n", "\n"),  # one blank line between records
    ("\n\n\n \n", "\n\n", "\n"),  # several, one of them spaces only
    ("\r\n\r\n", "\r\n\r\n\r\n", "\r\n"),  # the same with Windows line breaks
    ("\n", "", "\n"),  # no line break at the end of the file
])
def test_blank_lines_between_records_and_at_the_end_are_accepted(
        tmp_path: Path, monkeypatch, names: tuple[str, ...], between: str, tail: str,
        nl: str) -> None:
    monkeypatch.setenv("FMAUDIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "blank.fa"
    path.write_text(_fasta(names, between, tail, nl), newline="")
    expected = [(n, SEQS[n]) for n in names]
    assert _windows(path) == expected
    gz = tmp_path / "blank.fa.gz"  # plain gzip: indexed through its decompressed copy
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert _windows(gz) == expected


def test_index_matches_pyfaidx_on_a_clean_file(tmp_path: Path) -> None:
    path = tmp_path / "clean.fa"
    path.write_text(_fasta(("a", "b", "c")))
    pyfaidx.Faidx(str(path), indexname=str(tmp_path / "py.fai"), rebuild=True).close()
    with open(path, "rb") as fh:
        rows = fasta_mod.index_fasta(fh, path)
    fasta_mod.write_fai(rows, tmp_path / "ours.fai")
    assert (tmp_path / "ours.fai").read_text() == (tmp_path / "py.fai").read_text()


@pytest.mark.parametrize("gzipped", [False, True])
def test_blank_line_inside_a_record_names_the_line(tmp_path: Path, monkeypatch,
                                                   gzipped: bool) -> None:
    monkeypatch.setenv("FMAUDIT_CACHE", str(tmp_path / "cache"))
    text = f">a\n{_wrapped(SEQS['a'][:600])}\n\n{_wrapped(SEQS['a'][600:])}\n"  # line 12 blank
    path = tmp_path / ("in.fa.gz" if gzipped else "in.fa")
    path.write_bytes(gzip.compress(text.encode()) if gzipped else text.encode())
    with pytest.raises(FmauditError) as err:
        open_corpus(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "line 12 is blank" in msg and "'a'" in msg
    assert "remove them" in msg


def test_blank_line_inside_a_record_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "in.fa"
    path.write_text(f">a\nACGTACGT\n\nACGT\n>b\n{_wrapped(SEQS['c'])}\n")
    code, err = _cli(["corpus", "stats", str(path)], capsys)
    assert code == 2
    _one_line(err, str(path), "line 3 is blank")


@pytest.mark.parametrize(("text", "needles"), [
    (">a\nACGT\n>b\nACGT\n>a\nAC\n", ("'a' appears twice (lines 1 and 5)", "unique")),
    (">a\nACGT\n>\nACGT\n", ("line 3", "without a record name")),
    (">a\nACG\nACGTA\n", ("line 3 of record 'a' is longer than its first line", "rewrap")),
    (">a\nACGT\nAC\nACGT\n", ("line 3 of record 'a' is shorter", "not its last", "rewrap")),
    (">a\r\nACGT\r\nACGT\n>b\nAC\n", ("line 3 of record 'a' ends with another kind of line "
                                      "break", "dos2unix")),
    (">a\nAC\xc3\xa9GT\n", ("line 2 contains non-ASCII bytes",)),
])
def test_unindexable_fasta_names_the_line(tmp_path: Path, text: str,
                                          needles: tuple[str, ...]) -> None:
    path = tmp_path / "bad.fa"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(FmauditError) as err:
        fasta_mod.index_fasta(io.BytesIO(path.read_bytes()), path)
    for needle in needles:
        assert needle in str(err.value)
    with pytest.raises(FmauditError, match=str(path)):
        open_corpus(path)
    assert not list(tmp_path.glob("*.fai")) and not list(tmp_path.glob(".*tmp"))


def test_a_full_last_line_with_a_shorter_break_is_fine_at_the_end(tmp_path: Path) -> None:
    # pyfaidx reads one byte past such a line; harmless before a blank line or the file's end
    path = tmp_path / "mixed.fa"
    path.write_bytes(b">a\r\nACGT\r\nACGT\n\n>b\r\nACGT\r\nAC\n")
    assert _windows(path) == [("a", "ACGTACGT"), ("b", "ACGTAC")]


# ------------------------------------------------------------------ misnamed compression
@pytest.mark.parametrize("suffix", [".gz", ".bgz", ".GZ"])
def test_plain_text_named_gz_is_refused(tmp_path: Path, suffix: str, capsys) -> None:
    path = tmp_path / f"notgz.fa{suffix}"
    path.write_text(_fasta(("a",)))
    with pytest.raises(FmauditError, match="but not gzip-compressed") as err:
        open_corpus(path)
    assert str(path) in str(err.value)
    code, err_text = _cli(["corpus", "stats", str(path)], capsys)
    assert code == 2
    _one_line(err_text, str(path), "not gzip-compressed")


def test_unsupported_compression_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.fa.zip"
    path.write_text(_fasta(("a",)))
    with pytest.raises(FmauditError, match=r"\.zip files are not supported"):
        open_corpus(path, CorpusOptions(kind="dna"))


# ------------------------------------------------------------------ existing indexes
def _stale(tmp_path: Path, fai_text: str) -> Path:
    path = tmp_path / "stale.fa"
    path.write_text(_fasta(("b",)))
    fai = Path(str(path) + ".fai")
    fai.write_text(fai_text)
    stamp = path.stat().st_mtime + 10  # newer than the FASTA: looks fresh
    os.utime(fai, (stamp, stamp))
    return path


@pytest.mark.parametrize(("fai_text", "why"), [
    ("a\t99999\t3\t60\t61\n", "does not fit the file"),  # the reviewer's case
    ("a\t960\t3\t60\t61\n", "is not its header"),  # another file's record of the same size
    ("b\t500\t3\t50\t51\n", "no line break after 50 bases"),
    ("b\t950\t3\t60\t61\n", "does not end with its 950th base"),
    ("b\t960\t4\t60\t61\n", "does not start at the beginning of a line"),
    ("garbage\n", "malformed: line 1 has 1 tab-separated fields, not 5"),
    ("b\t960\tx\t60\t61\n", "non-integer"),
    ("b\t960\t3\t61\t60\n", "impossible numbers"),
    ("b\t960\t3\t60\t61\nb\t960\t3\t60\t61\n", "listed twice"),
    ("", "lists no record"),
])
def test_stale_or_corrupt_index_is_rebuilt(tmp_path: Path, capsys, fai_text: str,
                                           why: str) -> None:
    path = _stale(tmp_path, fai_text)
    fai = Path(str(path) + ".fai")
    assert why in (fasta_mod.fai_problem(fai, path) or "")
    c = open_corpus(path, CorpusOptions(holdout="0"))
    assert c.records == ["b"] and c.length() == 960 and c.read("b", 0, 960) == SEQS["b"]
    assert fai.read_text() == "b\t960\t3\t60\t61\n"
    err = capsys.readouterr().err
    assert "does not match the FASTA" in err and "rebuilding it" in err and why in err
    assert fasta_mod.fai_problem(fai, path) is None


@pytest.mark.parametrize("grow", ["record", "bases"])
def test_index_that_misses_the_end_of_the_file_is_rebuilt(tmp_path: Path, capsys,
                                                          grow: str) -> None:
    """An index cut at a line boundary, or a FASTA that grew under an index with the same date
    (`cp -p`, `rsync -t`, tar, one-second file times): the end check finds what it misses."""
    path = tmp_path / "g.fa"
    fai = Path(str(path) + ".fai")
    path.write_text(_fasta(("a", "b")))
    open_corpus(path, CorpusOptions(holdout="0"))  # writes the index of a and b
    more = _fasta(("c",)) if grow == "record" else SEQS["c"][:60] + "\n"
    with open(path, "a") as fh:
        fh.write(more)
    stat = fai.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same date as the index
    assert "the file goes on after record 'b'" in (fasta_mod.fai_problem(fai, path) or "")
    c = open_corpus(path, CorpusOptions(holdout="0"))
    assert "rebuilding it" in capsys.readouterr().err
    if grow == "record":
        assert c.records == ["a", "b", "c"] and c.read("c", 0, 333) == SEQS["c"]
    else:
        assert c.records == ["a", "b"] and c.read("b", 0, 1020) == SEQS["b"] + SEQS["c"][:60]
    assert fasta_mod.fai_problem(fai, path) is None


def test_corrupt_index_in_a_read_only_folder_is_a_clear_error(tmp_path: Path,
                                                              monkeypatch) -> None:
    path = _stale(tmp_path, "a\t99999\t3\t60\t61\n")
    monkeypatch.setattr(fasta_mod, "_dir_writable", lambda d: Path(d) != tmp_path)
    with pytest.raises(FmauditError) as err:
        open_corpus(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: the index {path}.fai does not match it")
    assert "--index-dir" in msg
    idx = tmp_path / "idx"  # the way out the message names
    assert open_corpus(path, CorpusOptions(fai_dir=str(idx))).length() == 960


def test_stale_index_through_the_cli(tmp_path: Path, capsys) -> None:
    path = _stale(tmp_path, "a\t99999\t3\t60\t61\n")
    code, err = _cli(["corpus", "stats", "--json", str(path)], capsys)
    assert code == 0 and "rebuilding it" in err


def test_a_valid_samtools_index_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "g.fa"
    path.write_text(_fasta(("a", "b", "c"), between="\n\n", tail="\n\n"))
    fai = Path(str(path) + ".fai")
    fai.write_text("a\t1000\t3\t60\t61\nb\t960\t1024\t60\t61\nc\t333\t2004\t60\t61\n")
    stamp = fai.stat().st_mtime_ns
    assert fasta_mod.fai_problem(fai, path) is None
    assert _windows(path) == [(n, SEQS[n]) for n in "abc"]
    assert fai.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------ held-out split
def test_holding_out_every_contig_is_refused_like_train(tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.fa"
    path.write_text(_fasta(("a", "b", "c")))
    corpus = open_corpus(path, CorpusOptions(holdout="a,b,c"))
    with pytest.raises(FmauditError, match=r"^--holdout a,b,c: leaves no training data in"):
        corpus_stats(corpus, spec="kmer:2")
    code, err = _cli(["corpus", "stats", str(path), "--holdout", "a,b,c"], capsys)
    assert code == 2
    _one_line(err, "--holdout a,b,c", str(path))
    selected = open_corpus(path, CorpusOptions(holdout="b", regions=("a", "b")))
    assert corpus_stats(selected, spec="kmer:2")["train_length"] == 1000


# ------------------------------------------------------------------ bgzip read in place
def _bgzf(data: bytes) -> bytes:
    """One BGZF block (SAM spec 4.1) and the EOF block."""
    import struct
    import zlib

    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    cdata = comp.compress(data) + comp.flush()
    return (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
            + struct.pack("<H", len(cdata) + 25) + cdata
            + struct.pack("<II", zlib.crc32(data), len(data))
            + bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000"))


@pytest.mark.parametrize(("text", "needle"), [
    (">a\nACGT\n\nAC\n", "line 3 is blank, inside record 'a'"),  # named by our reader
    (">a\nACGT\n\n\n", "cannot index this bgzip-compressed FASTA (boom)"),  # pyfaidx only
])
def test_bgzip_in_place_index_errors_are_clear(tmp_path: Path, monkeypatch, text: str,
                                               needle: str) -> None:
    """With biopython, pyfaidx indexes BGZF itself; its failures (a RuntimeError for trailing
    blank lines in pyfaidx 0.9) become one clear FmauditError. Simulated: no biopython here."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(fasta_mod, "_have_biopython", lambda: True)
    monkeypatch.setattr(pyfaidx, "Faidx", refuse)
    path = tmp_path / "b.fa.gz"
    path.write_bytes(_bgzf(text.encode()))
    assert fasta_mod.gzip_kind(path) == "bgzf"
    with pytest.raises(FmauditError) as err:
        open_corpus(path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value)
    assert not list(tmp_path.glob("*.fai")) and not list(tmp_path.glob(".*tmp"))
