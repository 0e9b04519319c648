"""`fmaudit report`: bad arguments and output folders fail fast (exit 2, one line), writes never
leave a new report.json beside stale views, and a changed training corpus is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.cliutil import one_error_line, run_main
from tests.tinymodels import random_dna, save_family, save_member, tiny_model

FAST = ["--samples", "6", "--seq-len", "32", "--batch-size", "6", "--fisher-samples", "2",
        "--k", "1,5"]


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[list[str], Path]:
    root = tmp_path_factory.mktemp("fam")
    members = [str(p) for p in save_family(root / "fam", "bert", seeds=(0, 1))]
    genome = root / "g.fa"
    genome.write_text("".join(f">chr{i}\n{random_dna(4000, i)}\n" for i in (1, 2)))
    return members, genome


def run(args: list[str], capsys) -> tuple[int, str, str]:
    return run_main(["--quiet", *args], capsys)


def one_line_error(code: int, err: str, *needles: str) -> None:
    one_error_line(code, "", err, *needles)  # a failed report prints nothing on stdout


@pytest.mark.parametrize(("extra", "needle"), [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**40)], "--seed"),
    (["--analyses", ""], "--analyses"),
    (["--analyses", ",,"], "--analyses"),
    (["--gate", "no-such-policy.toml"], "--gate no-such-policy.toml"),
    (["--out", ""], "--out"),
])
def test_bad_arguments_exit_2_in_one_line(family, capsys, tmp_path, monkeypatch, extra, needle):
    members, genome = family
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, *extra], capsys)
    one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []  # nothing written where we stand


@pytest.mark.parametrize("name", ["dn\x01a", "dna\u202e", "\u2066dna"])
def test_ensemble_names_with_control_or_bidi_characters_are_refused(family, capsys, name):
    members, genome = family
    code, _, err = run(["report", "--ensemble", f"{name}={members[0]}", "--corpus", str(genome),
                        *FAST], capsys)
    one_line_error(code, err, "--ensemble", "control or formatting characters")


def test_repeated_corpus_is_refused(family, capsys, tmp_path):
    members, genome = family
    other = tmp_path / "other.fa"
    other.write_text(">x\n" + random_dna(3000, 9) + "\n")
    code, _, err = run(["report", *members, "--corpus", str(genome), "--corpus", str(other)],
                       capsys)
    one_line_error(code, err, "--corpus", "already given")
    code, _, err = run(["--quiet", "report", "--ensemble", f"a={members[0]}", "--corpus",
                        f"a={genome}", "--corpus", f"a={other}"][1:], capsys)
    one_line_error(code, err, "for 'a'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_bad_input(family, capsys):
    members, genome = family
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--device", "cuda"],
                       capsys)
    one_line_error(code, err, "--device 'cuda'", "no cuda device")


def test_unwritable_out_fails_before_any_compute(family, capsys, tmp_path):
    members, genome = family
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code, _, err = run(["report", *members, "--corpus", str(genome), *FAST,
                            "--out", str(out)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--out" in err and "afile" in err


def test_members_must_share_the_hidden_size(family, capsys, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    members, genome = family
    tok = AutoTokenizer.from_pretrained(members[0])
    wide = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32,
                                      max_position_embeddings=64,
                                      pad_token_id=tok.pad_token_id))
    save_member(tmp_path / "wide", wide, tok)
    code, _, err = run(["report", members[0], str(tmp_path / "wide"), "--corpus", str(genome),
                        *FAST], capsys)
    one_line_error(code, err, "hidden size 32 differs")
    # the same width, one block more: the layer-wise comparisons need one depth
    ref = json.loads((Path(members[0]) / "config.json").read_text())
    deep = BertForMaskedLM(BertConfig(**{**ref, "num_hidden_layers": ref["num_hidden_layers"] + 1}))
    save_member(tmp_path / "deep", deep, tok)
    code, _, err = run(["report", members[0], str(tmp_path / "deep"), "--corpus", str(genome),
                        *FAST], capsys)
    one_line_error(code, err, f"depth {ref['num_hidden_layers'] + 1} differs")


@pytest.mark.parametrize("manifest", [[], {"corpus": 5}, {"corpus": {"path": 3}}])
def test_malformed_manifest_is_bad_input(family, capsys, tmp_path, manifest):
    members, _ = family
    tok_model = tiny_model("bert", 69, seed=0)
    from transformers import AutoTokenizer

    folder = save_member(tmp_path / "m", tok_model, AutoTokenizer.from_pretrained(members[0]))
    (folder / "fmaudit.json").write_text(json.dumps(manifest))
    code, _, err = run(["report", str(folder), *FAST], capsys)
    one_line_error(code, err, "fmaudit.json")


def test_every_token_masked_gives_null_contextual_metrics(family, capsys, tmp_path):
    members, genome = family
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--mask-prob", "1",
                        "--analyses", "predictions,embeddings", "--out", str(tmp_path / "o")],
                       capsys)
    assert code == 0, err
    ctx = json.loads((tmp_path / "o" / "report.json").read_text())["ensembles"]["model"][
        "contextual_embeddings"]
    # every window reads only [MASK]: all pooled states coincide, CKA is undefined
    assert all(layer["linear_cka"]["mean"] is None for layer in ctx["layers"])


def test_failed_write_keeps_the_previous_report_whole(family, capsys, tmp_path):
    members, genome = family
    out = tmp_path / "out"
    args = ["report", *members, "--corpus", str(genome), *FAST, "--analyses", "predictions",
            "--out", str(out)]
    assert run(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (out / "report.md").unlink()
    (out / "report.md").mkdir()  # a folder in the way of one view
    (out / "report.md" / "keep").write_text("x")
    code, _, err = run([*args, "--seed", "5"], capsys)
    one_line_error(code, err, "--out", "report.md is a folder")
    assert (out / "report.md" / "keep").read_text() == "x"
    assert (out / "report.json").read_bytes() == before["report.json"]
    assert (out / "report.html").read_bytes() == before["report.html"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_file_where_the_figures_folder_goes_is_left_alone(family, capsys, tmp_path):
    members, genome = family
    out = tmp_path / "out"
    out.mkdir()
    (out / "figures").write_text("someone's notes")
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--analyses",
                        "predictions", "--out", str(out)], capsys)
    one_line_error(code, err, "figures is a file")
    assert (out / "figures").read_text() == "someone's notes"
    assert [p.name for p in out.iterdir()] == ["figures"]  # nothing half-written beside it


def test_changed_training_corpus_is_flagged(family, capsys, tmp_path):
    members, genome = family
    from transformers import AutoTokenizer

    folder = save_member(tmp_path / "m", tiny_model("bert", 69, seed=0),
                         AutoTokenizer.from_pretrained(members[0]))
    manifest = {"corpus": {"path": str(genome), "file_sha256": "0" * 64,
                           "options": {"holdout": "0.5"}}}
    (folder / "fmaudit.json").write_text(json.dumps(manifest))
    code, _, err = run(["report", str(folder), *FAST, "--analyses", "predictions"], capsys)
    assert code == 0, err
    assert "differs from the one the members were trained on" in err


def test_a_copy_of_the_training_corpus_is_evaluated_on_its_holdout(family, capsys, tmp_path):
    """The members' manifest names the corpus by path and sha256: a byte-identical copy
    elsewhere is the same data, so only its held-out split is evaluated, as for the original
    (evaluating it whole would score the members on their training windows)."""
    members, genome = family
    from transformers import AutoTokenizer

    from fmaudit.corpus.fasta import file_sha256

    folder = save_member(tmp_path / "m", tiny_model("bert", 69, seed=0),
                         AutoTokenizer.from_pretrained(members[0]))
    manifest = {"corpus": {"path": str(tmp_path / "moved-away.fa"),
                           "file_sha256": file_sha256(genome), "options": {"holdout": "0.5"}}}
    (folder / "fmaudit.json").write_text(json.dumps(manifest))
    copy = tmp_path / "copy.fa"
    copy.write_bytes(genome.read_bytes())
    other = tmp_path / "other.fa"  # one base changed: another corpus, evaluated whole
    other.write_bytes(genome.read_bytes().replace(b"A", b"C", 1))
    splits = {}
    for corpus in (copy, other):
        out = tmp_path / f"out-{corpus.stem}"
        code, _, err = run(["report", str(folder), "--corpus", str(corpus), *FAST, "--analyses",
                            "predictions", "--out", str(out)], capsys)
        assert code == 0, err
        entry = json.loads((out / "report.json").read_text())["ensembles"]["model"]
        splits[corpus.stem] = (entry["corpus"]["split"], entry["corpus"]["holdout"])
    assert splits["copy"][0] == "holdout" and splits["copy"][1] is not None
    assert splits["other"][0] == "all"


def test_regions_that_leave_out_the_heldout_contig_name_regions(family, capsys, tmp_path):
    """The members were trained holding out chr2; `report` has no --holdout, so the error
    names what the user gave (--regions) and where the holdout comes from (the manifest)."""
    members, genome = family
    from transformers import AutoTokenizer

    folder = save_member(tmp_path / "m", tiny_model("bert", 69, seed=0),
                         AutoTokenizer.from_pretrained(members[0]))
    manifest = {"corpus": {"path": str(genome), "options": {"holdout": "chr2"}}}
    (folder / "fmaudit.json").write_text(json.dumps(manifest))
    code, _, err = run(["report", str(folder), *FAST, "--regions", "chr1"], capsys)
    one_line_error(code, err, "--regions chr1: leaves out the members' held-out contig(s) chr2",
                   str(folder / "fmaudit.json"))
    assert "--holdout" not in err


def test_staging_left_by_a_killed_run_is_cleared(family, capsys, tmp_path):
    members, genome = family
    out = tmp_path / "out"
    stale = out / ".report.abc123.tmp"
    stale.mkdir(parents=True)
    (stale / "report.json").write_text("{}")
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--analyses",
                        "predictions", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.json",
                                                       "report.md"]


def test_the_same_member_under_another_spelling_is_refused(family, capsys, tmp_path):
    members, genome = family
    link = tmp_path / "link"
    link.symlink_to(members[0])
    for other in (members[0] + "/", str(link)):
        code, _, err = run(["report", members[0], other, "--corpus", str(genome), *FAST],
                           capsys)
        one_line_error(code, err, "the same checkpoint as")


def test_failed_audit_leaves_no_empty_out_folder(family, capsys, tmp_path):
    members, _ = family
    empty = tmp_path / "empty.fa"
    empty.write_text(">x\nACGTACGT\n")  # far fewer windows than asked for
    out = tmp_path / "new"
    code, _, err = run(["report", *members, "--corpus", str(empty), *FAST, "--out", str(out)],
                       capsys)
    assert code == 2, err
    assert not out.exists()


@pytest.mark.parametrize(("taken", "kind"), [("report.json", "folder"), ("figures", "file"),
                                             ("report.html", "folder")])
def test_our_names_taken_in_out_fail_before_the_audit(family, capsys, tmp_path, monkeypatch,
                                                     taken, kind):
    import fmaudit.results.audit

    def no_audit(*args, **kwargs):
        raise AssertionError("the audit ran before --out was checked")

    monkeypatch.setattr(fmaudit.results.audit, "run_audit", no_audit)
    members, genome = family
    out = tmp_path / "o"
    out.mkdir()
    (out / taken).mkdir() if kind == "folder" else (out / taken).write_text("mine")
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--out", str(out)],
                       capsys)
    one_line_error(code, err, f"--out {out}", f"{taken} is a {kind} here")
    assert [p.name for p in out.iterdir()] == [taken]


def test_baseline_without_gate_warns(family, capsys, tmp_path):
    members, genome = family
    first = tmp_path / "first"
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--analyses",
                        "predictions", "--out", str(first)], capsys)
    assert code == 0, err
    code, _, err = run(["report", *members, "--corpus", str(genome), *FAST, "--analyses",
                        "predictions", "--baseline", str(first / "report.json")], capsys)
    assert code == 0, err
    assert "--baseline" in err and "without --gate nothing is compared to it" in err
