"""``fmaudit train`` input that used to crash or be trusted: damaged run files and members,
out-of-range recipe sizes and seeds, an empty or left-behind --out. Each gives exit 2 with one
line naming the file or argument, and nothing half-written is taken as done."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from fmaudit.cli import main
from fmaudit.errors import FmauditError
from fmaudit.training import manifest as mf
from fmaudit.training.ensemble import _seed_list
from fmaudit.training.recipes import load_recipe, parse_recipe

TINY = ["--max-steps", "3", "--eval-every", "3"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["-q", *argv])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fmaudit: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# ------------------------------------------------------------------ run file and manifests
def _identity() -> dict[str, Any]:
    recipe = load_recipe("tiny").replace(tokenizer="kmer:6")
    summary = {"path": "/x.fa", "name": "x", "kind": "dna", "fingerprint": "sha256:0",
               "holdout": "0.1", "regions": []}
    return mf.run_identity(recipe, summary, None)


@pytest.mark.parametrize(("content", "needle"), [
    ("[]", "run file is not a JSON object (it holds a list)"),
    ("{bad", "run file is not valid JSON"),
    ("null", "run file is not a JSON object"),
    (b"\xff\xfe", "unreadable run file"),
])
def test_damaged_run_file_is_named(tmp_path: Path, content: str | bytes, needle: str) -> None:
    path = tmp_path / mf.RUN_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(FmauditError) as err:
        mf.check_run_identity(tmp_path, _identity(), overwrite=False)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {needle}") and "--overwrite" in msg
    assert "different run" not in msg
    assert mf.check_run_identity(tmp_path, _identity(), overwrite=True) is False


@pytest.mark.parametrize(("content", "needle"), [
    ("[1]", "member manifest is not a JSON object"),
    ("{", "member manifest is not valid JSON"),
    ("{}", "member manifest has no valid 'seed'"),
    ('{"seed": 0, "data_seed": 0, "steps": "3"}', "member manifest has no valid 'steps'"),
])
def test_damaged_member_manifest_is_named(tmp_path: Path, content: str, needle: str) -> None:
    member = tmp_path / "seed0"
    member.mkdir()
    (member / mf.MANIFEST).write_text(content)
    with pytest.raises(FmauditError) as err:
        mf.read_manifest(member)
    assert str(err.value).startswith(f"{member / mf.MANIFEST}: {needle}")
    assert f"delete {member} to retrain it" in str(err.value)


def test_safetensors_check_catches_truncation_and_padding(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(10, 10), "b": torch.ones(3)}, path)
    assert mf.safetensors_problem(path) is None
    whole = path.read_bytes()
    path.write_bytes(whole[:100])
    assert "is truncated" in mf.safetensors_problem(path)
    path.write_bytes(whole[:-1])
    assert "is truncated or damaged" in mf.safetensors_problem(path)
    path.write_bytes(whole + b"\0")
    assert "is truncated or damaged" in mf.safetensors_problem(path)
    path.write_bytes(whole[:8] + b"{" * (len(whole) - 8))
    assert mf.safetensors_problem(path) == "has a corrupt header"
    path.write_bytes(b"")
    assert "is truncated" in mf.safetensors_problem(path)
    path.unlink()
    assert mf.safetensors_problem(path) == "is missing"


# ------------------------------------------------------------------ damaged finished members
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-member run on the bundled DNA, copied by each test that damages it."""
    from fmaudit.corpus import bundled
    from fmaudit.training import train_ensemble

    out = tmp_path_factory.mktemp("trained") / "run"
    train_ensemble(bundled("dna"), out, load_recipe("tiny").replace(max_steps=3, eval_every=3),
                   seeds=2)
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda m: _truncate(m / "model.safetensors"), "model.safetensors is truncated"),
    (lambda m: (m / "config.json").unlink(), "config.json is missing"),
    (lambda m: (m / "tokenizer.json").write_text("{"), "tokenizer.json is unreadable"),
    (lambda m: (m / "recipe.toml").unlink(), "recipe.toml is missing"),
])
def test_damaged_finished_member_is_not_skipped(trained: Path, tmp_path: Path, capsys,
                                                damage: Any, needle: str) -> None:
    out = _copy(trained, tmp_path)
    damage(out / "seed0")
    code, stdout, err = _run(["train", "--out", str(out), "--seeds", "2", *TINY], capsys)
    assert code == 2 and stdout == ""
    _one_error_line(err, f"{out / 'seed0'}: damaged member folder: {needle}",
                    f"delete {out / 'seed0'} to retrain this member")
    # the way out the message gives works: the member is retrained, bit for bit as before
    shutil.rmtree(out / "seed0")
    code, stdout, _ = _run(["train", "--out", str(out), "--seeds", "2", "--json", *TINY],
                           capsys)
    assert code == 0
    assert [m["status"] for m in json.loads(stdout)["members"]] == ["trained", "skipped"]
    assert (out / "seed0" / "model.safetensors").read_bytes() == \
        (trained / "seed0" / "model.safetensors").read_bytes()


def test_member_manifest_that_is_not_an_object(trained: Path, tmp_path: Path, capsys) -> None:
    out = _copy(trained, tmp_path)
    (out / "seed1" / mf.MANIFEST).write_text("[]")
    code, _, err = _run(["train", "--out", str(out), "--seeds", "2", *TINY], capsys)
    assert code == 2
    _one_error_line(err, str(out / "seed1" / mf.MANIFEST), "not a JSON object")


def test_manifest_of_another_seed_is_a_damaged_member(trained: Path, tmp_path: Path,
                                                      capsys) -> None:
    out = _copy(trained, tmp_path)
    shutil.copy(out / "seed1" / mf.MANIFEST, out / "seed0" / mf.MANIFEST)
    code, _, err = _run(["train", "--out", str(out), "--seeds", "2", *TINY], capsys)
    assert code == 2
    _one_error_line(err, "damaged member folder: fmaudit.json is the manifest of seed 1")


@pytest.mark.parametrize("content", ["[]", "{bad"])
def test_damaged_run_file_exits_2(trained: Path, tmp_path: Path, capsys, content: str) -> None:
    out = _copy(trained, tmp_path)
    (out / mf.RUN_FILE).write_text(content)
    code, _, err = _run(["train", "--out", str(out), "--seeds", "2", *TINY], capsys)
    assert code == 2
    _one_error_line(err, str(out / mf.RUN_FILE), "--overwrite")


def test_damaged_init_is_written_again(trained: Path, tmp_path: Path, capsys) -> None:
    out = _copy(trained, tmp_path)
    _truncate(out / "init" / "seed1" / "model.safetensors")
    shutil.rmtree(out / "init" / "seed0")
    code, stdout, err = _run(["train", "--out", str(out), "--seeds", "2", "--json", *TINY],
                             capsys)
    assert code == 0, err
    assert "damaged initial checkpoint" in err
    assert {m["status"] for m in json.loads(stdout)["members"]} == {"skipped"}
    for seed in (0, 1):  # the untrained weights are a pure function of the seed
        assert mf.checkpoint_problem(out / "init" / f"seed{seed}") is None
        assert (out / "init" / f"seed{seed}" / "model.safetensors").read_bytes() == \
            (trained / "init" / f"seed{seed}" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------ recipe sizes and seeds
@pytest.mark.parametrize(("key", "value"), [
    ("intermediate_size", 9223372036854775807), ("hidden_size", 2**20), ("num_layers", 10**6),
    ("seq_len", 2**30), ("batch_size", 2**40), ("eval_windows", 2**40),
    ("data_seed", 2**32), ("max_tokens", 10**30), ("max_steps", 10**20),
])
def test_recipe_sizes_are_bounded(key: str, value: int) -> None:
    with pytest.raises(FmauditError, match=rf"^r.toml: {key} must be at most [0-9,]+, got"):
        parse_recipe(f"{key} = {value}\nmax_steps = 3\n" if key != "max_steps"
                     else f"{key} = {value}\n", "r.toml")


def test_model_size_is_bounded() -> None:
    with pytest.raises(FmauditError, match=r"hidden_size \(16384\), num_layers \(200\) and "
                                           r"intermediate_size \(65536\) make about"):
        load_recipe("tiny").replace(source="r.toml", hidden_size=16384, num_heads=16,
                                    num_layers=200, intermediate_size=65536)


def test_recipe_size_overflow_exits_2_and_leaves_no_out(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "big.toml"
    recipe.write_text("intermediate_size = 9223372036854775807\nmax_steps = 3\n")
    code, _, err = _run(["train", "--recipe", str(recipe), "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2
    _one_error_line(err, str(recipe), "intermediate_size must be at most 65,536")
    assert not (tmp_path / "o").exists()


def test_seeds_must_fit_32_bits(tmp_path: Path, capsys) -> None:
    assert _seed_list(1, 2**32 - 1) == [2**32 - 1]
    with pytest.raises(FmauditError, match=r"^--seed-offset 4294967295: seeds "
                                           r"4294967295\.\.4294967296 do not fit"):
        _seed_list(2, 2**32 - 1)
    with pytest.raises(FmauditError, match="--seeds 1000000: at most"):
        _seed_list(10**6, 0)
    with pytest.raises(FmauditError, match=r"each in 0\.\.4294967295"):
        _seed_list([0, 2**32], 0)
    code, _, err = _run(["train", "--seed-offset", "4294967296", "--out",
                         str(tmp_path / "o"), *TINY], capsys)
    assert code == 2
    _one_error_line(err, "--seed-offset 4294967296", "2**32 - 1")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ --out
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_out_is_refused(tmp_path: Path, monkeypatch, capsys, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["train", "--out", value, *TINY], capsys)
    assert code == 2
    _one_error_line(err, "--out: empty path")
    assert list(tmp_path.iterdir()) == []
    from fmaudit.training import train_ensemble

    with pytest.raises(FmauditError, match="--out: empty path"):
        train_ensemble("dna", value, "tiny", seeds=1)


@pytest.mark.parametrize("theirs", ["README.md", "seed0/x.txt", "init/seed0/y.txt"])
def test_out_that_is_not_a_run_keeps_the_users_files(tmp_path: Path, capsys,
                                                     theirs: str) -> None:
    """A folder without fmaudit-run.json whose names a run would write (README.md, seed<k>/,
    init/) holds the user's files: refused, nothing touched; other files do not matter."""
    out = tmp_path / "o"
    (out / theirs).parent.mkdir(parents=True, exist_ok=True)
    (out / theirs).write_text("mine")
    (out / "notes.txt").write_text("mine too")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, _, err = _run(["train", "--seeds", "1", "--out", str(out), *TINY], capsys)
    assert code == 2
    _one_error_line(err, f"{out}: not an fmaudit run (no fmaudit-run.json) but holds "
                         f"{theirs.split('/')[0]}", "--overwrite")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / theirs).read_text() == "mine"
    # a folder with unrelated files only is fine to train into
    (out / theirs).unlink()
    if "/" in theirs:
        shutil.rmtree(out / theirs.split("/")[0])
    code, _, err = _run(["train", "--seeds", "1", "--out", str(out), *TINY], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine too" and (out / "seed0").is_dir()


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_full_disk_is_bad_input_and_the_rerun_resumes(tmp_path: Path, capsys, monkeypatch,
                                                      error: str) -> None:
    import errno

    from safetensors import SafetensorError

    from fmaudit.training import ensemble

    def full(*args: Any, **kwargs: Any) -> None:
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    out = tmp_path / "o"
    monkeypatch.setattr(ensemble, "_save_tokenizer", full)
    code, _, err = _run(["train", "--seeds", "1", "--out", str(out), *TINY], capsys)
    assert code == 2
    _one_error_line(err, f"--out {out}: cannot write (No space left on device", "resume")
    assert not (out / "seed0").exists()  # nothing half-written looks done
    monkeypatch.undo()
    code, _, err = _run(["train", "--seeds", "1", "--out", str(out), *TINY], capsys)
    assert code == 0, err
    assert (out / "seed0" / mf.MANIFEST).is_file()


def test_holding_out_almost_everything_names_holdout(make_fasta, tmp_path: Path,
                                                     capsys) -> None:
    fa = make_fasta({"c1": "ACGT" * 2000, "c2": "ACGT" * 30})
    code, _, err = _run(["train", "--corpus", str(fa), "--holdout", "c1", "--out",
                         str(tmp_path / "o"), *TINY], capsys)
    assert code == 2
    _one_error_line(err, "the train split (120 characters with --holdout c1) holds 0 windows",
                    "hold out less")
    # the bundled genome's contigs are 1, 2 and 3 (the last 120 bases)
    code, _, err = _run(["train", "--holdout", "1,2", "--out", str(tmp_path / "o2"), *TINY],
                        capsys)
    assert code == 2
    _one_error_line(err, "the train split holds 120 characters with --holdout 1,2",
                    "hold out less")


def test_failed_start_removes_the_out_it_created(make_fasta, tmp_path: Path, capsys) -> None:
    fa = make_fasta({"c1": "ACGT" * 500})  # fewer windows than one batch
    out = tmp_path / "new" / "deeper" / "o"
    code, _, err = _run(["train", "--corpus", str(fa), "--out", str(out), *TINY], capsys)
    assert code == 2
    _one_error_line(err, "fewer than one batch")
    assert not (tmp_path / "new").exists()
    # a folder that was there before stays, and so does what it held
    keep = tmp_path / "keep"
    keep.mkdir()
    code, _, _ = _run(["train", "--corpus", str(fa), "--out", str(keep), *TINY], capsys)
    assert code == 2 and keep.is_dir()
    (keep / "sub").mkdir()
    (keep / "sub" / "notes.txt").write_text("mine")
    code, _, _ = _run(["train", "--corpus", str(fa), "--out", str(keep / "sub" / "o"), *TINY],
                      capsys)
    assert code == 2 and (keep / "sub" / "notes.txt").read_text() == "mine"
    assert not (keep / "sub" / "o").exists()


def test_corpus_shorter_than_a_token_says_so(tmp_path: Path, capsys) -> None:
    short = tmp_path / "short.fa"
    short.write_text(">x\nACGT\n")  # shorter than one 6-mer
    code, _, err = _run(["train", "--corpus", str(short), "--seeds", "1", "--max-steps", "2",
                         "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "yields no --tokenizer kmer:6 token: no window long enough" in err
    assert "nan" not in err
    # long enough, but mostly IUPAC codes: the windows that would hold a token are skipped
    # for their N share, and the message says so
    rng = random.Random(0)
    iupac = "".join(rng.choice("RYKMSWBDHVN") if rng.random() < 0.73 else rng.choice("ACGT")
                    for _ in range(20_000))
    mostly_n = tmp_path / "iupac.fa"
    mostly_n.write_text(">x\n" + iupac + "\n")
    code, _, err = _run(["train", "--corpus", str(mostly_n), "--seeds", "1", "--max-steps",
                         "2", "--out", str(tmp_path / "out2")], capsys)
    _one_error_line(err, "yields no --tokenizer kmer:6 token",
                    "after skipping windows with N share > 0", "fewer N or IUPAC codes")
