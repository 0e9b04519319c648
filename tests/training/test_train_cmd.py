"""``fmaudit train`` on the command line: bad input -> exit 2 with one line; output; resume."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fmaudit.cli import main
from tests.training.conftest import subprocess_env

TINY = ["--max-steps", "4", "--eval-every", "2"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fmaudit: error: ") and "Traceback" not in err
    return lines[0]


def test_help_lists_the_main_options(capsys) -> None:
    code, out, _ = _run(["train", "--help"], capsys)
    assert code == 0
    for flag in ("--corpus", "--out", "--recipe", "--seeds", "--seed-offset", "--vary",
                 "--max-steps", "--batch-size", "--lr", "--tokenizer", "--seq-len",
                 "--mixed-precision", "--log-with", "--overwrite", "--json"):
        assert flag in out
    assert "--stop-after" not in out  # testing hook stays hidden


@pytest.mark.parametrize(("args", "needle"), [
    (["--recipe", "bert-base"], "--recipe bert-base: unknown recipe (valid: tiny, bert-4m"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--tokenizer", "kmer:12"], "tokenizer 'kmer:12'"),
    (["--max-steps", "0"], "--max-steps 0"),
    (["--seeds", "0"], "--seeds 0"),
    (["--corpus", "no/such.fa"], "no/such.fa: no such file"),
    (["--corpus", "text", "--tokenizer", "kmer:6"], "does not fit"),
    (["--holdout", "0"], "--holdout 0"),
    (["--log-with", "tensorbored"], "--log-with tensorbored: unknown tracker"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str, tmp_path: Path,
                                         capsys) -> None:
    code, out, err = _run(["train", "--out", str(tmp_path / "o"), *TINY, *args], capsys)
    assert code == 2
    assert needle in _one_error_line(err)
    assert out == ""
    # nothing left behind that a corrected command would trip over, not even an empty OUT
    assert not (tmp_path / "o").exists()


def test_unknown_recipe_key_is_named(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "x"\nlearning_rate = 0.1\nmax_steps = 2\n')
    code, _, err = _run(["train", "--out", str(tmp_path / "o"), "--recipe", str(recipe)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "unknown key 'learning_rate'" in line and str(recipe) in line


def test_corpus_too_small_for_one_batch(make_fasta, tmp_path: Path, capsys) -> None:
    rng = random.Random(0)
    fa = make_fasta({"c1": "".join(rng.choice("ACGT") for _ in range(4000))})
    code, _, err = _run(["train", "--corpus", str(fa), "--out", str(tmp_path / "o"), *TINY],
                        capsys)
    assert code == 2
    assert "fewer than one batch (16)" in _one_error_line(err)


def test_unwritable_out(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(["train", "--out", str(blocker / "sub"), *TINY], capsys)
    assert code == 2
    assert "cannot write there" in _one_error_line(err)
    code, _, err = _run(["train", "--out", str(blocker), *TINY], capsys)
    assert code == 2
    assert "is a file" in _one_error_line(err)


def test_json_output_and_different_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    code, stdout, _ = _run(["train", "--out", str(out), "--seeds", "2", "--seed-offset", "3",
                            "--json", *TINY], capsys)
    assert code == 0
    data = json.loads(stdout)
    assert [m["seed"] for m in data["members"]] == [3, 4]
    assert {m["status"] for m in data["members"]} == {"trained"}
    assert (out / "seed3" / "fmaudit.json").is_file() and (out / "init" / "seed4").is_dir()
    # same command again: skipped, table output
    code, stdout, _ = _run(["train", "--out", str(out), "--seeds", "2", "--seed-offset", "3",
                            *TINY], capsys)
    assert code == 0
    assert stdout.count("skipped") == 2 and "data stream: matched" in stdout
    code, _, err = _run(["train", "--out", str(out), "--seeds", "1", "--lr", "0.01", *TINY],
                        capsys)
    assert code == 2
    assert "holds a different run (lr 0.002 -> 0.01)" in _one_error_line(err)
    code, _, _ = _run(["train", "--out", str(out), "--seeds", "1", "--lr", "0.01",
                       "--overwrite", *TINY], capsys)
    assert code == 0
    assert sorted(p.name for p in out.glob("seed*")) == ["seed0"]


def test_interrupted_command_resumes_when_rerun(tmp_path: Path) -> None:
    """The real entry point in a subprocess: exit 130 on interruption, then resume to 0."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "fmaudit", "train", "--out", str(out), "--seeds", "1",
           "--max-steps", "8", "--save-every", "3", "--json"]
    first = subprocess.run([*cmd, "--stop-after", "4"], env=subprocess_env(),
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 130, first.stderr
    assert not (out / "seed0").exists()
    assert (out / ".work" / "seed0" / "state" / "state.json").is_file()
    second = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    member = json.loads(second.stdout)["members"][0]
    assert member["status"] == "resumed" and member["steps"] == 8 and member["resumed"]


def test_missing_tracker_is_named(tmp_path: Path, capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    code, _, err = _run(["train", "--out", str(tmp_path / "o"), "--log-with", "tensorboard",
                         *TINY], capsys)
    assert code == 2
    assert "--log-with tensorboard: the tracker is not installed" in _one_error_line(err)
