"""FASTA corpora: cleaning, windows, splits, regions, determinism, gzip, indexes, bad input.

The expected windows come from a plain-Python reference that tiles the sequences the test wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from fmaudit.corpus import CorpusOptions, bundled, open_corpus, reverse_complement
from fmaudit.corpus import fasta as fasta_mod
from fmaudit.errors import FmauditError

IUPAC = "RYSWKMBDHV"


def _genome() -> dict[str, str]:
    rng = np.random.default_rng(7)

    def seq(n: int) -> str:
        return "".join(rng.choice(list("ACGT"), n))

    c1 = list(seq(3000))
    c1[500:900] = [b.lower() for b in c1[500:900]]  # soft-masked repeat
    c1[1200:1300] = "N" * 100  # assembly gap
    c1[2000] = "R"
    c1[2101] = "y"
    c2 = list(seq(2000))
    c2[0:1000] = [b.lower() for b in c2[0:1000]]
    return {"c1": "".join(c1), "c2": "".join(c2), "c3": seq(250)}


GENOME = _genome()


def clean(s: str) -> str:
    """Reference cleaning: IUPAC codes -> N, then uppercase."""
    return "".join("N" if c.upper() in IUPAC else c for c in s).upper()


def reference_windows(records: dict[str, str], intervals: list[tuple[str, int, int]], length: int,
                      max_n: float = 0.0, max_lower: float = 1.0) -> list[tuple[str, int, str]]:
    out = []
    for name, s, e in intervals:
        for start in range(s, e - length + 1, length):
            raw = records[name][start:start + length]
            n_share = sum(c in "Nn" or c.upper() in IUPAC for c in raw) / length
            lower = sum(c.islower() for c in raw) / length
            if n_share <= max_n and lower <= max_lower:
                out.append((name, start, clean(raw)))
    return out


def fraction_split(records: dict[str, str], f: float) -> tuple[list, list]:
    train, hold = [], []
    for name, s in records.items():
        cut = len(s) - int(len(s) * f)
        train.append((name, 0, cut))
        hold.append((name, cut, len(s)))
    return train, hold


@pytest.fixture
def genome(make_fasta) -> Path:
    return make_fasta(GENOME, width=61)


def test_records_lengths_and_cleaning(genome: Path) -> None:
    c = open_corpus(genome)
    assert c.kind == "dna" and c.name == "genome"
    assert c.records == ["c1", "c2", "c3"]
    assert c.length("all") == sum(map(len, GENOME.values()))
    assert c.read("c1", 1990, 2110) == clean(GENOME["c1"][1990:2110])
    kept = open_corpus(genome, CorpusOptions(keep_case=True)).read("c1", 495, 505)
    assert kept == GENOME["c1"][495:505] and kept[5:].islower()
    # chunks stream the whole split, cleaned, in order
    chunks = list(c.iter_chunks("all", chunk_size=700))
    assert max(len(t) for _, t in chunks) <= 700
    assert "".join(t for r, t in chunks if r == "c1") == clean(GENOME["c1"])


@pytest.mark.parametrize(("max_n", "max_lower"), [(0.0, 1.0), (0.5, 1.0), (0.0, 0.5), (1.0, 0.0)])
def test_all_windows_match_reference(genome: Path, max_n: float, max_lower: float) -> None:
    c = open_corpus(genome, CorpusOptions(max_n=max_n, max_lowercase=max_lower))
    train, hold = fraction_split(GENOME, 0.1)
    for split, ivs in (("train", train), ("holdout", hold)):
        got = [(w.record, w.start, w.text) for w in c.windows(split, 100)]
        assert got == reference_windows(GENOME, ivs, 100, max_n, max_lower)
        assert all(not w.reverse for w in c.windows(split, 100))


def test_n_and_lowercase_filters(genome: Path) -> None:
    default = open_corpus(genome).windows("all", 100)
    assert default and all("N" not in w.text for w in default)
    assert all(w.text.isupper() for w in default)
    with_n = open_corpus(genome, CorpusOptions(max_n=1.0)).windows("all", 100)
    assert any("N" in w.text for w in with_n) and len(with_n) > len(default)
    no_mask = open_corpus(genome, CorpusOptions(max_lowercase=0.5)).windows("all", 100)
    starts = {(w.record, w.start) for w in no_mask}
    assert ("c1", 600) not in starts and ("c2", 0) not in starts  # mostly lowercase
    assert ("c1", 0) in starts


def test_holdout_fraction_per_contig_no_overlap(genome: Path) -> None:
    c = open_corpus(genome, CorpusOptions(holdout="0.2"))
    train, hold = fraction_split(GENOME, 0.2)
    assert [(iv.record, iv.start, iv.end) for iv in c.intervals("train")] == train
    assert [(iv.record, iv.start, iv.end) for iv in c.intervals("holdout")] == hold
    assert c.length("train") + c.length("holdout") == c.length("all")
    covered = {(w.record, i) for w in c.windows("train", 50) for i in range(w.start, w.start + 50)}
    held = {(w.record, i) for w in c.windows("holdout", 50) for i in range(w.start, w.start + 50)}
    assert covered and held and not covered & held


def test_holdout_contigs(genome: Path) -> None:
    c = open_corpus(genome, CorpusOptions(holdout="c2,c3"))
    assert {w.record for w in c.windows("train", 100)} == {"c1"}
    assert {w.record for w in c.windows("holdout", 100)} == {"c2", "c3"}
    assert c.length("holdout") == len(GENOME["c2"]) + len(GENOME["c3"])
    with pytest.raises(FmauditError, match="--holdout: unknown contig 'c9'"):
        open_corpus(genome, CorpusOptions(holdout="c9"))
    with pytest.raises(FmauditError, match=r"unknown contig '2' .* \(a fraction must be in "):
        open_corpus(genome, CorpusOptions(holdout="2"))
    with pytest.raises(FmauditError, match="not among the selected regions"):
        open_corpus(genome, CorpusOptions(regions=("c1",), holdout="c2"))
    everything = open_corpus(genome, CorpusOptions(holdout="c1,c2,c3"))
    with pytest.raises(FmauditError, match="leaves no training data"):
        everything.windows("train", 100)
    assert everything.windows("holdout", 100)  # evaluation still works
    with pytest.raises(FmauditError, match="is empty"):
        open_corpus(genome, CorpusOptions(holdout="0")).windows("holdout", 100)


def test_regions_select_and_split(genome: Path) -> None:
    c = open_corpus(genome, CorpusOptions(regions=("c1:1,001-2,000", "c2"), holdout="0.1"))
    assert [(iv.record, iv.start, iv.end) for iv in c.intervals("all")] == \
        [("c1", 1000, 2000), ("c2", 0, 2000)]
    assert [(iv.record, iv.start, iv.end) for iv in c.intervals("holdout")] == \
        [("c1", 1900, 2000), ("c2", 1800, 2000)]
    train = c.windows("train", 100)
    assert {w.record for w in train} == {"c1", "c2"}
    for w in train:
        assert (w.record == "c1" and w.start >= 1000 and w.start + 100 <= 1900) or \
            (w.record == "c2" and w.start + 100 <= 1800)
    with pytest.raises(FmauditError, match="outside contig 'c3'"):
        open_corpus(genome, CorpusOptions(regions=("c3:200-251",)))
    with pytest.raises(FmauditError, match="unknown contig 'chr1'"):
        open_corpus(genome, CorpusOptions(regions=("chr1",)))


def test_sampled_windows_are_deterministic(genome: Path) -> None:
    a = open_corpus(genome).windows("train", 80, n=20, seed=3)
    b = open_corpus(genome).windows("train", 80, n=20, seed=3)
    assert a == b
    assert a != open_corpus(genome).windows("train", 80, n=20, seed=4)
    assert open_corpus(genome).windows("train", 80, n=30, seed=3)[:20] == a  # prefix property
    every = {(w.record, w.start, w.text) for w in open_corpus(genome).windows("train", 80)}
    assert {(w.record, w.start, w.text) for w in a} <= every
    assert len({(w.record, w.start) for w in a}) == 20  # without replacement


def test_numeric_contig_names_can_be_held_out(tmp_path: Path) -> None:
    """Ensembl/GRCh37 FASTAs name their contigs 1, 2, ...: --holdout 2 is that contig."""
    fa = tmp_path / "ens.fa"
    fa.write_text("".join(f">{name}\n{GENOME[c]}\n" for name, c in (("1", "c1"), ("2", "c2"))))
    c = open_corpus(fa, CorpusOptions(holdout="2"))
    assert {w.record for w in c.windows("holdout", 100)} == {"2"}
    assert {w.record for w in c.windows("train", 100)} == {"1"}


def test_more_windows_than_exist(genome: Path) -> None:
    c = open_corpus(genome)
    m = len(c.windows("holdout", 50))
    assert len(c.windows("holdout", 50, n=m, seed=1)) == m
    with pytest.raises(FmauditError, match=f"only {m} exist"):
        c.windows("holdout", 50, n=m + 1)
    assert len(c.windows("holdout", 50, n=m + 1, allow_fewer=True)) == m
    with pytest.raises(FmauditError, match="only 0 exist"):
        c.windows("train", 10_000, n=1)
    # an absurd count is the same bad input, not an allocation for that many windows
    for huge in (10**11, 10**22):
        with pytest.raises(FmauditError, match=f"asked for {huge} windows .* only {m} exist"):
            c.windows("holdout", 50, n=huge)
        assert len(c.windows("holdout", 50, n=huge, allow_fewer=True)) == m


@pytest.mark.parametrize("keep_case", [False, True])
def test_sampled_windows_read_back_the_accepted_text(genome: Path, keep_case: bool) -> None:
    opts = CorpusOptions(reverse_complement=True, keep_case=keep_case, max_n=0.5)
    c = open_corpus(genome, opts)
    ws = c.windows("all", 60, n=40, seed=2)
    assert len(ws) == len(ws.texts) == 40 and any(w.reverse for w in ws)
    for w, text in zip(ws, ws.texts, strict=True):
        raw = GENOME[w.record][w.start:w.start + 60]
        forward = "".join(("N" if ch.isupper() else "n") if ch.upper() in IUPAC else ch
                          for ch in raw)
        forward = forward if keep_case else forward.upper()
        assert text == w.text == (reverse_complement(forward) if w.reverse else forward)
    assert ws[-1] == list(ws)[-1] and ws.texts[3:5] == [ws[3].text, ws[4].text]
    with pytest.raises(IndexError):
        ws[40]


def test_sampled_windows_hold_places_not_texts(genome: Path) -> None:
    import tracemalloc

    c = open_corpus(genome, CorpusOptions(max_n=1.0))

    def held_by(n: int) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            ws = c.windows("all", 200, n=n, seed=0, allow_fewer=True)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert sum(len(w.text) for w in ws) == 200 * len(ws)
        return held, len(ws)

    (small, n_small), (large, n_large) = held_by(2), held_by(40)
    assert n_large >= 20
    # texts would add 200 bytes a window; places add a few dozen (the fixed part of the list
    # differs between Python versions, so the growth is measured)
    assert (large - small) / (n_large - n_small) < 100, (small, large)


def test_window_changed_on_disk_is_a_clear_error(genome: Path, monkeypatch) -> None:
    c = open_corpus(genome)
    ws = c.windows("train", 100, n=5, seed=0)
    assert ws[0].text == ws[0].text  # read back twice, the same
    # the file now holds an assembly gap there (file buffers make an in-place rewrite of a
    # small test file invisible, so the source is told so directly)
    monkeypatch.setattr(c._source, "read", lambda record, start, end: "N" * (end - start))
    with pytest.raises(FmauditError, match="modified during the run"):
        ws[0]


def test_reverse_complement_is_a_seeded_coin(genome: Path) -> None:
    opts = CorpusOptions(reverse_complement=True, max_n=1.0)
    ws = open_corpus(genome, opts).windows("all", 20)
    assert ws == open_corpus(genome, opts).windows("all", 20)
    flipped = sum(w.reverse for w in ws) / len(ws)
    assert 0.35 < flipped < 0.65  # p = 1/2 over ~260 windows
    for w in ws:
        forward = clean(GENOME[w.record][w.start:w.start + 20])
        assert w.text == (reverse_complement(forward) if w.reverse else forward)
    assert reverse_complement("AACGTn") == "nACGTT"


def test_fingerprint(genome: Path, tmp_path: Path) -> None:
    c = open_corpus(genome)
    file_hash = hashlib.sha256(genome.read_bytes()).hexdigest()
    assert c.file_sha256() == file_hash
    payload = file_hash + "\n" + json.dumps({"kind": "dna", **c.options.content_dict()},
                                            sort_keys=True)
    assert c.fingerprint() == "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
    assert open_corpus(genome, CorpusOptions(fai_dir=str(tmp_path / "idx"))).fingerprint() == \
        c.fingerprint()  # where the index lives does not change the content
    assert open_corpus(genome, CorpusOptions(max_n=0.1)).fingerprint() != c.fingerprint()
    summary = c.summary()
    assert summary["fingerprint"] == c.fingerprint()
    assert CorpusOptions(**summary["options"]) == c.options
    assert json.loads(json.dumps(summary)) == summary


def _bgzf(data: bytes, block: int = 1000) -> bytes:
    """A BGZF file (SAM spec 4.1): gzip members with a 'BC' extra field, then the EOF block."""
    out = b""
    for i in range(0, len(data), block):
        chunk = data[i:i + block]
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        cdata = comp.compress(chunk) + comp.flush()
        bsize = len(cdata) + 25
        out += (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
                + struct.pack("<H", bsize) + cdata
                + struct.pack("<II", zlib.crc32(chunk), len(chunk)))
    return out + bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def test_gzip_and_bgzip_load_like_plain(genome: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FMAUDIT_CACHE", str(tmp_path / "cache"))
    plain = open_corpus(genome).windows("all", 100)
    gz = tmp_path / "g.fa.gz"
    gz.write_bytes(gzip.compress(genome.read_bytes()))
    bgz = tmp_path / "b.fa.gz"
    bgz.write_bytes(_bgzf(genome.read_bytes()))
    assert fasta_mod.gzip_kind(gz) == "gzip" and fasta_mod.gzip_kind(bgz) == "bgzf"
    assert gzip.decompress(bgz.read_bytes()) == genome.read_bytes()
    for path in (gz, bgz):
        c = open_corpus(path)
        assert c.name in ("g", "b") and c.windows("all", 100) == plain
        assert c.file_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_plain_gzip_asks_for_bgzip(genome: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FMAUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fasta_mod, "GZIP_LIMIT", 1000)
    gz = tmp_path / "big.fa.gz"
    gz.write_bytes(gzip.compress(genome.read_bytes()))
    with pytest.raises(FmauditError, match="bgzip") as err:
        open_corpus(gz)
    assert str(gz) in str(err.value)


def test_read_only_folder_needs_index_dir(genome: Path, tmp_path: Path, monkeypatch) -> None:
    folder = genome.parent
    real = fasta_mod._dir_writable
    monkeypatch.setattr(fasta_mod, "_dir_writable", lambda d: Path(d) != folder and real(d))
    with pytest.raises(FmauditError, match="--index-dir") as err:
        open_corpus(genome)
    assert str(genome) in str(err.value) and "not writable" in str(err.value)
    idx = tmp_path / "idx"
    c = open_corpus(genome, CorpusOptions(fai_dir=str(idx)))
    assert len(list(idx.glob("genome.fa.*.fai"))) == 1
    assert not Path(str(genome) + ".fai").exists()
    assert c.windows("all", 100) == open_corpus(genome, CorpusOptions(fai_dir=str(idx))).windows(
        "all", 100)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(genome: Path, tmp_path: Path) -> None:  # pragma: no cover
    os.chmod(genome.parent, 0o555)
    try:
        with pytest.raises(FmauditError, match="--index-dir"):
            open_corpus(genome)
    finally:
        os.chmod(genome.parent, 0o755)


def test_index_is_built_once_and_reused(genome: Path) -> None:
    open_corpus(genome)
    fai = Path(str(genome) + ".fai")
    stamp = fai.stat().st_mtime_ns
    open_corpus(genome)
    assert fai.stat().st_mtime_ns == stamp
    assert not [p for p in genome.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b">a\n>b\nACGT\n", "record 'a' has a header but no sequence"),
    (b">a\nACGT\n>b\n", "record 'b' has a header but no sequence"),
    (b">a\nACGT\n>a\nACGT\n", "unique"),
    (b">a\nACGTAC\nAC\nACGTAC\n", "cannot index"),
    (b"ACGTACGT\n", "not a FASTA file"),
    (b">a\nAC\x00GT\n", "binary"),
    (bytes(range(256)) * 8, "binary"),
    (b">a\nAC\xe9GT\n", "not ASCII"),
])
def test_bad_fasta(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(FmauditError) as err:
        open_corpus(path)
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("filler", [0, 70_000])  # the header in or after the sniffed head
def test_utf8_in_a_header_is_accepted_wherever_it_is(tmp_path: Path, filler: int) -> None:
    head = ">chr0\n" + "\n".join(["ACGT" * 15] * (filler // 61)) + "\n" if filler else ""
    path = tmp_path / "u.fa"
    path.write_bytes(f"{head}>chr1 Müller strain\nACGTACGTAC\n".encode())
    c = open_corpus(path, CorpusOptions(holdout="0"))
    assert c.records[-1] == "chr1" and c.read("chr1", 0, 10) == "ACGTACGTAC"


def test_protein_letters_are_an_error_when_read(make_fasta) -> None:
    c = open_corpus(make_fasta({"p": "ACGT" * 10 + "QLMEF" + "ACGT" * 10}))
    with pytest.raises(FmauditError, match=r"p:41: 'Q' is not a nucleotide"):
        c.windows("all", 20)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FmauditError, match="no such file"):
        open_corpus(tmp_path / "nope.fa")
    with pytest.raises(FmauditError, match="is a folder"):
        open_corpus(tmp_path)


def test_bundled_dna_has_clean_windows(tmp_path: Path, monkeypatch) -> None:
    c = open_corpus(bundled("dna"))
    assert c.kind == "dna" and c.bundled == "dna" and len(c.records) >= 2
    train = c.windows("train", 500)
    assert len(train) >= 300 and all("N" not in w.text for w in train)
    assert len(c.windows("holdout", 500)) >= 30
    lam = open_corpus(bundled("lambda"))
    assert lam.length() == 48_502  # NC_001416.1
    with pytest.raises(FmauditError, match="unknown"):
        bundled("nope")


def test_bundled_index_falls_back_to_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FMAUDIT_CACHE", str(tmp_path / "cache"))
    data = bundled("dna").parent
    real = fasta_mod._dir_writable
    monkeypatch.setattr(fasta_mod, "_fresh", lambda index, source: False)
    monkeypatch.setattr(fasta_mod, "_dir_writable", lambda d: Path(d) != data and real(d))
    c = open_corpus(bundled("dna"))
    assert list((tmp_path / "cache" / "index").glob("dna.fa.*.fai"))
    assert c.length() == 200_280


def test_file_hash_is_read_once_and_follows_changes(tmp_path: Path, monkeypatch) -> None:
    """A genome hashed twice in one process is read once; a file rewritten in place with the
    same size and modification time is hashed again (its change time moved)."""
    from fmaudit.corpus import fasta

    path = tmp_path / "g.fa"
    path.write_bytes(b">a\nACGT\n")
    first = fasta.file_sha256(path)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert fasta.file_sha256(path) == first and reads == []
    stat = path.stat()
    time.sleep(0.01)
    path.write_bytes(b">a\nACGA\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fasta.file_sha256(path) == hashlib.sha256(b">a\nACGA\n").hexdigest() != first
    assert reads == [path]
