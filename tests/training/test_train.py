"""End to end through the Python API: tiny ensembles on the bundled DNA and text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fmaudit.corpus import bundled, open_corpus
from fmaudit.errors import FmauditError
from fmaudit.training import load_recipe, train_ensemble
from fmaudit.training.data import IGNORE

Ensemble = tuple[Path, list[dict[str, Any]]]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _check_members_load(out: Path, manifests: list[dict[str, Any]], text: str) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    for m in manifests:
        folder = out / f"seed{m['seed']}"
        assert Path(m["path"]) == folder
        model = AutoModelForMaskedLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.vocab_size == len(tok) == m["tokenizer"]["vocab_size"]
        enc = tok([text], return_tensors="pt")
        assert enc["input_ids"].shape[1] > 2  # the saved tokenizer does not truncate to 2
        with torch.no_grad():
            logits = model(**enc).logits
        assert logits.shape == (1, enc["input_ids"].shape[1], len(tok))
        # trained weights are what the loop produced, not the init
        assert any(not torch.equal(a, b) for a, b in zip(
            _weights(folder).values(), _weights(out / "init" / f"seed{m['seed']}").values(),
            strict=True))


def test_dna_members_load_with_auto_classes(dna_ensemble: Ensemble) -> None:
    out, manifests = dna_ensemble
    assert [m["seed"] for m in manifests] == [0, 1, 2]
    assert {m["status"] for m in manifests} == {"trained"}
    _check_members_load(out, manifests, "ACGTAC" * 30)


def test_members_differ_only_by_seed(dna_ensemble: Ensemble) -> None:
    out, manifests = dna_ensemble
    fps = {m["data_stream"]["fingerprint"] for m in manifests}
    assert len(fps) == 1 and next(iter(fps)).startswith("sha256:")
    assert {m["recipe_fingerprint"] for m in manifests} == {manifests[0]["recipe_fingerprint"]}
    w = [_weights(out / f"seed{s}") for s in range(3)]
    emb = "bert.embeddings.word_embeddings.weight"
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(w[i][emb], w[j][emb])
    assert len({m["tokens"] for m in manifests}) == 1


def test_init_checkpoints_are_the_seeded_untrained_models(dna_ensemble: Ensemble) -> None:
    from fmaudit.models.build import build_model
    from fmaudit.tokenizer import build_tokenizer

    out, manifests = dna_ensemble
    recipe = load_recipe(str(out / "seed1" / "recipe.toml"))
    rebuilt = build_model(recipe, build_tokenizer(recipe.tokenizer), seed=1).state_dict()
    saved = _weights(out / "init" / "seed1")
    for name, tensor in saved.items():
        assert torch.equal(tensor, rebuilt[name]), name
    assert (out / "init" / "seed1" / "tokenizer.json").is_file()
    assert manifests[1]["init"] == "../init/seed1"
    assert (out / "seed1" / manifests[1]["init"]).resolve() == (out / "init" / "seed1").resolve()


def test_manifest_records_provenance_and_losses(dna_ensemble: Ensemble) -> None:
    out, manifests = dna_ensemble
    m = json.loads((out / "seed0" / "fmaudit.json").read_text())
    r = load_recipe("tiny")
    assert m["recipe"]["tokenizer"] == "kmer:6" and m["recipe"]["lr"] == r.lr
    assert m["steps"] == r.total_steps
    assert m["tokens"] == r.total_steps * r.batch_size * r.seq_len  # k-mer windows fill seq_len
    assert m["corpus"]["fingerprint"] == open_corpus(bundled("dna")).fingerprint()
    assert m["corpus"]["length"]["train"] > 0 and m["heldout"]["split"] == "holdout"
    assert {"fmaudit", "torch", "transformers"} <= set(m["versions"])
    assert m["wall_time_s"] > 0 and m["architecture"] == "BertForMaskedLM"
    assert [e["step"] for e in m["heldout_history"]] == [50, 100, 150]
    assert m["heldout_loss"] == m["heldout_history"][-1]["heldout_loss"]
    # the final train loss is the token-weighted mean of the last eval_every steps (recomputed
    # from the per-step history, which the manifest does not store: check the bounds instead)
    assert 0 < m["train_loss"] < math.log(4101)
    assert m["train_loss_steps"] == r.eval_every  # the window it averages over
    # it learned something: held-out cross-entropy below the uniform log V for every member
    for man in manifests:
        assert man["uniform_loss"] == pytest.approx(math.log(4101))
        assert man["heldout_loss"] < man["uniform_loss"] - 0.02


def test_model_card_lists_members(dna_ensemble: Ensemble) -> None:
    out, _ = dna_ensemble
    card = (out / "README.md").read_text()
    for s in range(3):
        assert f"[seed{s}](seed{s}/)" in card
    assert "seed<0..2>" in card and "AutoModelForMaskedLM" in card
    assert not (out / ".work").exists()  # resume state is gone once members are done


def test_heldout_windows_are_never_trained_on() -> None:
    from fmaudit.training.ensemble import prepare_data

    data = prepare_data(open_corpus(bundled("dna")), load_recipe("tiny"))
    ev = data.eval_set
    original = torch.where(ev.labels != IGNORE, ev.labels, ev.input_ids)
    train_rows = {tuple(r) for r in data.train_encoded["input_ids"].long().tolist()}
    assert len(ev) == 32
    assert not any(tuple(r) in train_rows for r in original.tolist())


def test_text_ensemble_trains_bpe_members(text_ensemble: Ensemble) -> None:
    out, manifests = text_ensemble
    _check_members_load(out, manifests, "The package manager installs software. " * 8)
    assert {m["tokenizer"]["spec"] for m in manifests} == {"bpe:4101"}
    assert len({m["data_stream"]["fingerprint"] for m in manifests}) == 1
    for m in manifests:
        assert m["heldout_loss"] < math.log(m["tokenizer"]["vocab_size"])
    tokenizer_json = json.loads((out / "seed0" / "tokenizer.json").read_text())
    assert tokenizer_json["truncation"] is None and tokenizer_json["padding"] is None


def test_vary_data_order_changes_the_stream(tmp_path: Path) -> None:
    common = dict(recipe=load_recipe("tiny").replace(max_steps=6), seeds=2)
    matched = train_ensemble(bundled("dna"), tmp_path / "m", **common)
    varied = train_ensemble(bundled("dna"), tmp_path / "v", vary="data-order", **common)
    assert [m["data_seed"] for m in varied] == [0, 1]
    assert varied[0]["data_stream"]["fingerprint"] != varied[1]["data_stream"]["fingerprint"]
    # seed 0's data seed is the recipe's (0) either way; seed 1's differs from the matched run
    assert varied[0]["data_stream"]["fingerprint"] == matched[0]["data_stream"]["fingerprint"]
    assert varied[1]["data_stream"]["fingerprint"] != matched[1]["data_stream"]["fingerprint"]
    assert "different data streams" in (tmp_path / "v" / "README.md").read_text()


def test_resume_after_interruption_is_bitwise_equal(tmp_path: Path) -> None:
    recipe = load_recipe("tiny").replace(max_steps=12, eval_every=4)
    ref = train_ensemble(bundled("dna"), tmp_path / "ref", recipe, seeds=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(bundled("dna"), out, recipe, seeds=2, save_every=4, stop_after=7)
    # nothing half-written looks complete: no member folder, only resume state at step 4
    assert not (out / "seed0").exists()
    state = json.loads((out / ".work" / "seed0" / "state" / "state.json").read_text())
    assert state["step"] == 4
    resumed = train_ensemble(bundled("dna"), out, recipe, seeds=2, save_every=4)
    assert [m["status"] for m in resumed] == ["resumed", "trained"]
    for a, b in zip(ref, resumed, strict=True):
        assert a["data_stream"]["fingerprint"] == b["data_stream"]["fingerprint"]
        assert a["heldout_loss"] == b["heldout_loss"] and a["train_loss"] == b["train_loss"]
        seed = a["seed"]
        assert (tmp_path / "ref" / f"seed{seed}" / "model.safetensors").read_bytes() == \
            (out / f"seed{seed}" / "model.safetensors").read_bytes()
    again = train_ensemble(bundled("dna"), out, recipe, seeds=3, save_every=4)
    assert [m["status"] for m in again] == ["skipped", "skipped", "trained"]


def test_a_different_run_is_refused_unless_overwrite(tmp_path: Path) -> None:
    recipe = load_recipe("tiny").replace(max_steps=3)
    train_ensemble(bundled("dna"), tmp_path, recipe, seeds=2)
    with pytest.raises(FmauditError, match=r"different run \(lr 0.002 -> 0.001\)"):
        train_ensemble(bundled("dna"), tmp_path, recipe.replace(lr=1e-3), seeds=1)
    with pytest.raises(FmauditError, match="different run"):
        train_ensemble(bundled("lambda"), tmp_path, recipe, seeds=1)
    (tmp_path / "notes.txt").write_text("mine")
    done = train_ensemble(bundled("dna"), tmp_path, recipe.replace(lr=1e-3), seeds=1,
                          overwrite=True)
    assert done[0]["recipe"]["lr"] == 1e-3
    assert not (tmp_path / "seed1").exists()  # the old run's members are gone...
    assert (tmp_path / "notes.txt").read_text() == "mine"  # ...and nothing else
    same = train_ensemble(bundled("dna"), tmp_path, recipe.replace(lr=1e-3), seeds=1)
    assert same[0]["status"] == "skipped"
    again = train_ensemble(bundled("dna"), tmp_path, recipe.replace(lr=1e-3), seeds=1,
                           overwrite=True)
    assert again[0]["status"] == "trained"  # --overwrite starts over even on the same run


def test_same_holdout_spelled_otherwise_is_the_same_run(tmp_path: Path) -> None:
    from fmaudit.corpus import CorpusOptions

    recipe = load_recipe("tiny").replace(max_steps=2)
    train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1,
                   corpus_options=CorpusOptions(holdout="0.1"))
    for spelling in ("0.10", ".1", "1e-1"):
        again = train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1,
                               corpus_options=CorpusOptions(holdout=spelling))
        assert again[0]["status"] == "skipped"
    # another holdout is another run, and the refusal says which option changed
    with pytest.raises(FmauditError, match=r"different run \(corpus holdout '0.1' -> '0.2'\)"):
        train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1,
                       corpus_options=CorpusOptions(holdout="0.2"))


def test_another_precision_is_another_run(tmp_path: Path) -> None:
    """A member trained half in fp32 and half in bf16, or an ensemble of both, is not the
    matched ensemble its manifests would claim: resuming or extending it in another
    precision is refused."""
    recipe = load_recipe("tiny").replace(max_steps=2)
    train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1, mixed_precision="no")
    with pytest.raises(FmauditError, match=r"different run \(mixed precision 'no' -> 'bf16'\)"):
        train_ensemble(bundled("dna"), tmp_path, recipe, seeds=2, mixed_precision="bf16")
    assert not (tmp_path / "seed1").exists()
    run = json.loads((tmp_path / "fmaudit-run.json").read_text())
    assert run["mixed_precision"] == "no"
    # a run file from before the key: the members' manifests record the precision
    del run["mixed_precision"]
    (tmp_path / "fmaudit-run.json").write_text(json.dumps(run))
    with pytest.raises(FmauditError, match=r"mixed precision 'no' -> 'bf16'"):
        train_ensemble(bundled("dna"), tmp_path, recipe, seeds=2, mixed_precision="bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 needs a GPU: refused on CPU only")
@pytest.mark.parametrize("source", ["flag", "launcher"])
def test_fp16_on_cpu_is_refused(tmp_path: Path, monkeypatch, source: str) -> None:
    """accelerate would run it as fp32 without a word, and the manifest would say fp16; the
    setting may also come from `accelerate launch --mixed_precision fp16`."""
    if source == "launcher":
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    precision = "fp16" if source == "flag" else "auto"
    with pytest.raises(FmauditError, match="--mixed-precision fp16: not available on the CPU"):
        train_ensemble(bundled("dna"), tmp_path / "out", "tiny", seeds=1,
                       mixed_precision=precision)
    assert not (tmp_path / "out").exists()


def test_run_file_with_a_holdout_spelled_the_old_way_continues(tmp_path: Path) -> None:
    """Run files written before holdouts had one spelling fingerprinted "0.10" as typed: the
    same run, continued with the same option, is recognised."""
    from fmaudit.corpus import CorpusOptions

    recipe = load_recipe("tiny").replace(max_steps=2)
    train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1,
                   corpus_options=CorpusOptions(holdout="0.10"))
    run_file = tmp_path / "fmaudit-run.json"
    run = json.loads(run_file.read_text())
    corpus = open_corpus(bundled("dna"), CorpusOptions(holdout="0.10"))
    run["corpus"]["holdout"] = "0.10"  # as the older release wrote it
    run["corpus_fingerprint"] = corpus.fingerprint(holdout_as_written="0.10")
    assert run["corpus_fingerprint"] != corpus.fingerprint()
    run_file.write_text(json.dumps(run))
    done = train_ensemble(bundled("dna"), tmp_path, recipe, seeds=2,
                          corpus_options=CorpusOptions(holdout="0.10"))
    assert [m["status"] for m in done] == ["skipped", "trained"]


def test_a_changed_cleaning_option_is_named(tmp_path: Path) -> None:
    from fmaudit.corpus import CorpusOptions

    recipe = load_recipe("tiny").replace(max_steps=2)
    train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1)
    with pytest.raises(FmauditError, match=r"different run \(corpus option max_n 0.0 -> 0.5\)"):
        train_ensemble(bundled("dna"), tmp_path, recipe, seeds=1,
                       corpus_options=CorpusOptions(max_n=0.5))


def test_leftovers_of_a_killed_checkpoint_write_are_swept(tmp_path: Path) -> None:
    """A kill -9 inside an atomic folder write leaves its hidden staging folder (a checkpoint's
    size): training that member again removes it, and other members' are left alone."""
    recipe = load_recipe("tiny").replace(max_steps=2)
    train_ensemble(bundled("dna"), tmp_path, recipe, seeds=[1])
    left = [tmp_path / ".seed0.k9x.tmp", tmp_path / "init" / ".seed0.k9x.tmp",
            tmp_path / ".seed1.k9x.tmp", tmp_path / ".seed2.k9x.tmp"]
    for folder in left:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
    done = train_ensemble(bundled("dna"), tmp_path, recipe, seeds=[0, 1])
    assert [m["status"] for m in done] == ["trained", "skipped"]
    assert [f.exists() for f in left] == [False, False, False, True]


def test_checkpoints_have_the_usual_permissions(tmp_path: Path) -> None:
    """transformers and safetensors stage files with mkstemp (0600): the group could not read
    the weights that every other output shares."""
    import os

    mask = os.umask(0)
    os.umask(0o022)
    try:
        train_ensemble(bundled("dna"), tmp_path, load_recipe("tiny").replace(max_steps=1),
                       seeds=1)
    finally:
        os.umask(mask)
    for folder in (tmp_path / "seed0", tmp_path / "init" / "seed0"):
        assert oct((folder / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
        assert oct(folder.stat().st_mode & 0o777) == oct(0o755)


def test_sampled_stream_for_large_corpora(tmp_path: Path) -> None:
    """Above the tiling threshold windows are drawn per chunk of steps; still matched."""
    recipe = load_recipe("tiny").replace(max_steps=4)
    ms = train_ensemble(bundled("dna"), tmp_path, recipe, seeds=2, tile_max_tokens=0)
    assert {m["data_stream"]["mode"] for m in ms} == {"sampled"}
    assert ms[0]["data_stream"]["fingerprint"] == ms[1]["data_stream"]["fingerprint"]


def test_too_small_corpus_and_unfit_tokenizer(make_fasta, tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    small = make_fasta({"c1": "".join(rng.choice("ACGT") for _ in range(3000))})
    with pytest.raises(FmauditError, match="fewer than one batch"):
        train_ensemble(small, tmp_path / "a", "tiny", seeds=1)
    with pytest.raises(FmauditError, match=r"does not fit .*\[UNK\]"):
        train_ensemble(bundled("text"), tmp_path / "b",
                       load_recipe("tiny").replace(tokenizer="kmer:6"), seeds=1)
    assert not list((tmp_path / "a").glob("seed*"))
