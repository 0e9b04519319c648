"""Manifests, run identity and the state folder: formulas, refusals, atomicity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fmaudit.errors import FmauditError
from fmaudit.training import manifest as mf
from fmaudit.training.recipes import load_recipe
from fmaudit.training.resume import Progress, load_state, save_state


def test_final_train_loss_is_token_weighted() -> None:
    losses, targets = [9.0, 4.0, 2.0, 1.0], [10, 30, 10, 0]
    loss, used = mf.final_train_loss(losses, targets, window=3)
    assert used == 3
    assert loss == pytest.approx((4.0 * 30 + 2.0 * 10 + 1.0 * 0) / 40)
    assert mf.final_train_loss(losses, targets, window=10) == \
        (pytest.approx(sum(a * b for a, b in zip(losses, targets, strict=True)) / 50), 4)


def _manifest(progress: Progress) -> dict:
    recipe = load_recipe("tiny").replace(tokenizer="kmer:6")
    summary = {"path": "/x.fa", "name": "x", "kind": "dna", "fingerprint": "sha256:0",
               "holdout": "0.1", "regions": []}
    return mf.member_manifest(
        seed=2, data_seed=0, recipe=recipe, tokenizer_spec="kmer:6", vocab_size=4101,
        architecture="BertForMaskedLM", parameters=10, corpus_summary=summary, window_chars=372,
        stream={"mode": "tiled"}, heldout_windows=3, progress=progress,
        runtime={"processes": 1}, resumed=False)


def test_manifest_holds_numbers_or_null() -> None:
    prog = Progress(step=2, chain="ab" * 32, tokens=10, targets=4, elapsed_s=1.0,
                    train_losses=[float("nan"), 1.0], train_targets=[2, 2],
                    evals=[{"step": 2, "heldout_loss": float("inf")}])
    m = _manifest(prog)
    json.dumps(m, allow_nan=False)  # would raise on NaN
    assert m["heldout_loss"] is None and m["heldout_history"][0]["heldout_loss"] is None
    assert m["data_stream"]["fingerprint"] == "sha256:" + "ab" * 32
    assert m["uniform_loss"] == pytest.approx(math.log(4101))
    assert m["init"] == "../init/seed2"


def test_run_identity_refusal_names_the_difference(tmp_path: Path) -> None:
    recipe = load_recipe("tiny").replace(tokenizer="kmer:6")
    summary = {"path": "/x.fa", "name": "x", "kind": "dna", "fingerprint": "sha256:0",
               "holdout": "0.1", "regions": []}
    ident = mf.run_identity(recipe, summary, None)
    assert mf.check_run_identity(tmp_path, ident, overwrite=False) is False  # empty OUT
    (tmp_path / mf.RUN_FILE).write_text(json.dumps(ident))
    assert mf.check_run_identity(tmp_path, ident, overwrite=False) is True
    renamed = mf.run_identity(recipe.replace(name="other", save_every=1), summary, None)
    assert mf.check_run_identity(tmp_path, renamed, overwrite=False) is True
    other = mf.run_identity(recipe.replace(seq_len=32), summary, "data-order")
    with pytest.raises(FmauditError) as err:
        mf.check_run_identity(tmp_path, other, overwrite=False)
    assert "seq_len 64 -> 32" in str(err.value) and "vary None -> 'data-order'" in str(err.value)
    assert mf.check_run_identity(tmp_path, other, overwrite=True) is False


def test_members_without_run_file_are_not_adopted(tmp_path: Path) -> None:
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / mf.MANIFEST).write_text("{}")
    ident = {"recipe_fingerprint": "a", "corpus_fingerprint": "b", "vary": None}
    with pytest.raises(FmauditError, match=r"without fmaudit-run\.json"):
        mf.check_run_identity(tmp_path, ident, overwrite=False)


def test_state_round_trip_and_atomic_replace(tmp_path: Path, monkeypatch) -> None:
    tensors = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "optimizer": {"state": {},
               "param_groups": [{"lr": 0.1, "params": [0]}]}, "scheduler": {"last_epoch": 3}}
    prog = Progress(step=3, chain="cd" * 32, tokens=30, train_losses=[1.0, 2.0, 3.0],
                    train_targets=[1, 1, 1])
    save_state(tmp_path, prog, tensors, seed=1, data_seed=0, recipe_fingerprint="sha256:r")
    got_prog, got = load_state(tmp_path, seed=1, data_seed=0, recipe_fingerprint="sha256:r")
    assert got_prog == prog
    assert torch.equal(got["model"]["w"], tensors["model"]["w"])
    assert got["scheduler"] == {"last_epoch": 3}

    # a crash while writing the next state leaves the previous one in place
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_state(tmp_path, Progress(step=6), tensors, seed=1, data_seed=0,
                   recipe_fingerprint="sha256:r")
    monkeypatch.undo()
    again, _ = load_state(tmp_path, seed=1, data_seed=0, recipe_fingerprint="sha256:r")
    assert again.step == 3
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # no temporary folder left

    with pytest.raises(FmauditError, match="seed"):
        load_state(tmp_path, seed=2, data_seed=0, recipe_fingerprint="sha256:r")
    assert load_state(tmp_path / "none", seed=1, data_seed=0, recipe_fingerprint="x") is None
