"""``fmaudit corpus stats``: output equals the pure computation; bad input exits 2 in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmaudit.cli import main
from fmaudit.corpus import CorpusOptions, open_corpus
from fmaudit.corpus import fasta as fasta_mod
from fmaudit.corpus.stats import corpus_stats


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture
def genome(make_fasta) -> Path:
    rng = np.random.default_rng(4)
    seqs = {name: "".join(rng.choice(list("ACGT"), n)) for name, n in
            (("chr1", 4000), ("chr2", 3000), ("chrM", 800))}
    seqs["chr2"] = seqs["chr2"][:1000] + "N" * 200 + seqs["chr2"][1200:]
    return make_fasta(seqs)


def test_json_equals_the_pure_function(genome: Path, capsys) -> None:
    code, out, err = run(["corpus", "stats", str(genome), "--tokenizer", "kmer:3", "--json"],
                         capsys)
    assert code == 0, err
    got = json.loads(out)["corpora"]
    from fmaudit.tokenizer import build_tokenizer

    expected = corpus_stats(open_corpus(genome), build_tokenizer("kmer:3"))
    assert got == [json.loads(json.dumps(expected))]


def test_regions_holdout_and_index_dir_pass_through(genome: Path, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    real = fasta_mod._dir_writable
    monkeypatch.setattr(fasta_mod, "_dir_writable", lambda d: Path(d) != genome.parent and real(d))
    argv = ["corpus", "stats", str(genome), "--regions", "chr1:1-2,000", "--regions", "chr2",
            "--holdout", "chr2", "--tokenizer", "char", "--json"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--index-dir" in err and "Traceback" not in err
    code, out, err = run([*argv, "--index-dir", str(tmp_path / "idx")], capsys)
    assert code == 0, err
    r = json.loads(out)["corpora"][0]
    assert r["length"] == 2000 + 3000 and r["holdout_length"] == 3000
    assert r["n_fraction"] == pytest.approx(200 / 5000)
    assert list((tmp_path / "idx").glob("*.fai"))


def test_default_is_both_bundled_corpora_as_a_table(capsys) -> None:
    code, out, err = run(["corpus", "stats"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["corpus", "kind", "records"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows["dna"][1] == "dna" and "kmer:6" in rows["dna"]
    assert rows["text"][1] == "text" and "bpe:4101" in rows["text"]
    assert "H1" in out and "lzma" in out  # the legend


@pytest.mark.parametrize(("args", "needle"), [
    (["--tokenizer", "kmer:12"], "--tokenizer"),
    (["--holdout", "1.5"], "--holdout"),
    (["--regions", "chr9"], "unknown contig 'chr9'"),
])
def test_bad_arguments_exit_2_with_one_line(genome: Path, capsys, args: list[str],
                                            needle: str) -> None:
    code, out, err = run(["corpus", "stats", str(genome), *args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("fmaudit: error:") and needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary", b"caf\xe9\n"])
def test_bad_files_exit_2(tmp_path: Path, capsys, content: bytes) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    code, _, err = run(["corpus", "stats", str(path)], capsys)
    assert code == 2 and str(path) in err and len(err.splitlines()) == 1
    code, _, err = run(["corpus", "stats", str(tmp_path / "missing.fa")], capsys)
    assert code == 2 and "no such file" in err


def test_corpus_is_listed_in_help(capsys) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "corpus" in out
    code, out, _ = run(["corpus", "stats", "--help"], capsys)
    assert code == 0 and "--index-dir" in out and "--regions" in out


def test_options_object_used_by_the_command_round_trips() -> None:
    # the command builds CorpusOptions from flags; manifests rebuild it from summary()["options"]
    opts = CorpusOptions(regions=("chr1:1-10",), holdout="chr1", fai_dir="/tmp/x")
    assert CorpusOptions(**json.loads(json.dumps(opts.to_dict()))) == opts
