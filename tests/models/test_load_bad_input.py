"""Bad member folders (corrupt or incomplete weights, broken configs, missing tokenizers, odd
specs) fail with a FmauditError naming the member, never a raw exception or a silently
re-initialised model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmaudit.errors import FmauditError
from fmaudit.models import load as mload
from fmaudit.models.specs import MAX_MEMBERS, MemberSpec, expand_ranges, parse_member_specs
from tests.cliutil import child_env
from tests.tinymodels import random_dna, save_family, save_member, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fam")
    save_family(root / "bert", "bert", seeds=(0, 1))
    save_family(root / "gpt2", "gpt2", seeds=(0,))
    (root / "r.fa").write_text(f">chr1\n{random_dna(4000, 1)}\n")
    return root


def copy_member(family: Path, tmp_path: Path, name: str = "bad", kind: str = "bert") -> Path:
    dst = tmp_path / name
    shutil.copytree(family / kind / "seed0", dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def drop_every_second_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    kept = {k: tensors[k] for k in sorted(tensors)[::2]}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})


def load(folder: Path, allow_pickle: bool = False):
    """resolve -> config -> objective -> weights, as the audit does."""
    member = mload.resolve_member(MemberSpec(str(folder)), allow_pickle=allow_pickle)
    config = mload.load_config(member)
    return mload.load_model(member, config, mload.detect_objective(config),
                            allow_pickle=allow_pickle)


# ----------------------------------------------------------------------------- good members
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_tied_models_load_without_report(family, capfd, kind):
    # tied output weights are absent from the file and must not count as missing
    model = load(family / kind / "seed0")
    assert not model.training
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "not sharded" not in err, err


# ----------------------------------------------------------------------------- corrupt weights
@pytest.mark.parametrize("content", [b"", b"\x00" * 7, os.urandom(5000)], ids=["empty", "tiny",
                                                                              "random"])
def test_corrupt_safetensors(family, tmp_path, content):
    bad = copy_member(family, tmp_path)
    (bad / "model.safetensors").write_bytes(content)
    with pytest.raises(FmauditError, match=r"bad: cannot load its weights.*SafetensorError"):
        load(bad)


def test_truncated_safetensors(family, tmp_path):
    bad = copy_member(family, tmp_path)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FmauditError, match="bad: cannot load its weights"):
        load(bad)


@pytest.mark.parametrize("content", [b"junk junk junk", b"\x80\x02}q\x00.garbage", b""])
def test_junk_pickle_with_allow_pickle(family, tmp_path, content):
    bad = copy_member(family, tmp_path)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(FmauditError, match="bad: cannot load its weights"):
        load(bad, allow_pickle=True)


def test_index_naming_a_missing_shard(family, tmp_path):
    bad = copy_member(family, tmp_path)
    (bad / "model.safetensors").unlink()
    index = bad / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "missing.safetensors"}}))
    with pytest.raises(FmauditError, match=r"model\.safetensors\.index\.json: .*missing"):
        load(bad)
    index.write_text("[]")
    with pytest.raises(FmauditError, match="weight_map"):
        load(bad)


def _sharded(folder: Path, shard: str) -> None:
    """Turn ``folder`` into a sharded checkpoint whose index maps every weight to ``shard``."""
    from safetensors.torch import load_file

    keys = list(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: shard for k in keys}}))


@pytest.mark.parametrize("shard", ["weights.bin", "x.model", "shard.pt"])
def test_index_naming_pickle_shards_needs_allow_pickle(family, tmp_path, shard):
    """transformers loads whatever the index names, a pickle shard included: without
    --allow-pickle only .safetensors shards are accepted, before anything is read."""
    import torch
    from safetensors.torch import load_file

    bad = copy_member(family, tmp_path)
    torch.save(load_file(bad / "model.safetensors"), bad / shard)
    _sharded(bad, shard)
    member = mload.resolve_member(MemberSpec(str(bad)))
    with pytest.raises(FmauditError, match=rf"not safetensors \({shard}\).*--allow-pickle"):
        mload.check_weights(member, allow_pickle=False)
    with pytest.raises(FmauditError, match="--allow-pickle"):
        load(bad)
    assert load(bad, allow_pickle=True) is not None  # the user vouches for it


@pytest.mark.parametrize("where", ["../outside/shard.safetensors", "ABSOLUTE", "sub/s.safetensors"])
def test_index_naming_shards_outside_the_folder_is_refused(family, tmp_path, where):
    """An index may not send the loader to another folder (another member's weights, say)."""
    bad = copy_member(family, tmp_path)
    target = (tmp_path / "outside" / "shard.safetensors") if where == "ABSOLUTE" else \
        (bad / where)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(family / "bert" / "seed1" / "model.safetensors", target)
    _sharded(bad, str(target) if where == "ABSOLUTE" else where)
    with pytest.raises(FmauditError, match=r"names weight shard\(s\) outside"):
        load(bad)


@pytest.mark.parametrize(("weight_map", "needle"), [
    ({}, "no 'weight_map'"),
    ({"a": "model-1.safetensors", "b": "model-2.safetensors"}, r"not in .*model-2"),
    ({"a": "model-1.safetensors", "b": "folder.safetensors"}, r"not in .*folder"),
    ({"a": "model-1.safetensors", "b": "evilsafetensors"}, r"not safetensors \(evilsafetensors"),
    ({"a": "model-1.safetensors", "b": "../model-1.safetensors"}, r"shard\(s\) outside"),
])
def test_every_shard_the_index_names_is_checked(family, tmp_path, weight_map, needle):
    """Each named shard, not only the first: present, a plain file, safetensors, beside it."""
    bad = copy_member(family, tmp_path)
    shutil.copy(bad / "model.safetensors", bad / "model-1.safetensors")
    shutil.copy(bad / "model.safetensors", tmp_path / "model-1.safetensors")
    (bad / "folder.safetensors").mkdir()
    (bad / "evilsafetensors").write_bytes(b"")
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    member = mload.resolve_member(MemberSpec(str(bad)))
    with pytest.raises(FmauditError, match=needle):
        mload.check_weights(member, allow_pickle=False)


def test_a_member_linked_to_another_members_weights_is_a_duplicate(family, tmp_path, capsys):
    """Two folders whose weights are one file (a symlink) would fake perfect agreement."""
    from fmaudit.cli import main

    twin = copy_member(family, tmp_path, "twin")
    (twin / "model.safetensors").unlink()
    (twin / "model.safetensors").symlink_to(family / "bert" / "seed1" / "model.safetensors")
    with pytest.raises(SystemExit) as exc:
        main(["-q", "report", str(family / "bert" / "seed1"), str(twin), "--corpus",
              str(family / "r.fa"), "--samples", "4", "--seq-len", "32"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the same checkpoint as" in err, err


@pytest.mark.parametrize("dtype", ["int8", "uint8", "bool", "float8_e4m3fn"])
def test_quantised_or_integer_weights_are_refused(family, tmp_path, dtype):
    """transformers casts an integer or 8-bit float weight to the model's float type without
    a word; the audit would score garbage."""
    import torch
    from safetensors.torch import load_file, save_file

    bad = copy_member(family, tmp_path)
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("attention.self.query.weight"))
    weights[name] = weights[name].to(getattr(torch, dtype))
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FmauditError, match=rf"bad: weight {re.escape(name)} is stored as"):
        load(bad)
    weights[name] = weights[name].to(torch.bfloat16)  # half precision is a float: fine
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    assert load(bad) is not None


# ----------------------------------------------------------------------------- weights vs config
@pytest.mark.parametrize("changes", [{"hidden_size": 32}, {"max_position_embeddings": 2},
                                     {"intermediate_size": 8}])
def test_config_that_does_not_fit_the_weights(family, tmp_path, changes):
    bad = copy_member(family, tmp_path)
    edit_config(bad, **changes)
    with pytest.raises(FmauditError, match=r"bad: .*another shape.*config\.json"):
        load(bad)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_config_declaring_fewer_blocks_than_trained_is_refused(family, tmp_path, kind):
    bad = copy_member(family, tmp_path, kind=kind)
    edit_config(bad, **({"num_hidden_layers": 1} if kind == "bert" else {"n_layer": 1}))
    with pytest.raises(FmauditError, match=r"bad: .*transformer blocks config\.json does not"):
        load(bad)


def test_missing_tensors_are_refused(family, tmp_path):
    bad = copy_member(family, tmp_path)
    drop_every_second_tensor(bad)
    with pytest.raises(FmauditError, match=r"bad: the checkpoint lacks \d+ weight"):
        load(bad)


def test_missing_gpt2_tensors_are_refused(family, tmp_path):
    bad = copy_member(family, tmp_path, kind="gpt2")
    drop_every_second_tensor(bad)
    with pytest.raises(FmauditError, match=r"bad: the checkpoint lacks \d+ weight"):
        load(bad)


@pytest.mark.parametrize("head", ["BertForSequenceClassification", "BertModel"])
def test_model_without_lm_head_is_refused(family, tmp_path, head):
    import transformers

    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    config = tiny_model("bert", len(tok), 5, tok=tok).config
    bad = save_member(tmp_path / "bad", getattr(transformers, head)(config), tok)
    with pytest.raises(FmauditError, match=r"bad: the checkpoint lacks .*cls\.predictions"):
        load(bad)


# ----------------------------------------------------------------------------- config.json
@pytest.mark.parametrize(("text", "needle"), [
    ("[]", "expected a JSON object, found list"),
    ('"bert"', "expected a JSON object, found str"),
    ("{not json", "not valid JSON"),
])
def test_config_not_an_object(family, tmp_path, text, needle):
    bad = copy_member(family, tmp_path)
    (bad / "config.json").write_text(text)
    with pytest.raises(FmauditError, match="config.json: " + needle):
        load(bad)


@pytest.mark.parametrize("changes", [
    {"num_hidden_layers": "two"}, {"num_hidden_layers": -1}, {"num_hidden_layers": 0},
    {"hidden_size": 0}, {"vocab_size": -5}, {"num_attention_heads": 0},
    {"max_position_embeddings": -1}, {"model_type": "no-such-model"},
])
def test_invalid_config_values(family, tmp_path, changes):
    bad = copy_member(family, tmp_path)
    edit_config(bad, **changes)
    with pytest.raises(FmauditError, match=r"config\.json: ") as exc:
        load(bad)
    assert "\n" not in str(exc.value)


def test_invalid_gpt2_layer_count(family, tmp_path):
    bad = copy_member(family, tmp_path, kind="gpt2")
    edit_config(bad, n_layer=-1)
    with pytest.raises(FmauditError, match="num_hidden_layers is -1"):
        load(bad)


# ----------------------------------------------------------------------------- other files
def test_folder_without_tokenizer_files(family, tmp_path):
    bad = copy_member(family, tmp_path)
    for f in bad.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    member = mload.resolve_member(MemberSpec(str(bad)))
    with pytest.raises(FmauditError, match="bad: no tokenizer files"):
        mload.load_tokenizer(member)


@pytest.mark.parametrize("text", ["{}", "[]", '{"model": 5}', "garbage"])
def test_malformed_tokenizer_json(family, tmp_path, text):
    bad = copy_member(family, tmp_path)
    (bad / "tokenizer.json").write_text(text)
    member = mload.resolve_member(MemberSpec(str(bad)))
    with pytest.raises(FmauditError, match="bad: cannot load its tokenizer"):
        mload.load_tokenizer(member)


def test_manifest_not_an_object(family, tmp_path):
    bad = copy_member(family, tmp_path)
    (bad / mload.MANIFEST).write_text("[1, 2]")
    with pytest.raises(FmauditError, match=r"fmaudit\.json: fmaudit manifest is not a JSON object"):
        mload.resolve_member(MemberSpec(str(bad)))


def test_unknown_user_in_tilde_path():
    with pytest.raises(FmauditError, match=r"~nosuchuser-fmaudit-3x/x: cannot expand '~'"):
        mload.resolve_member(MemberSpec("~nosuchuser-fmaudit-3x/x"))


def test_path_too_long():
    with pytest.raises(FmauditError, match="not a usable path"):
        mload.resolve_member(MemberSpec("./" + "x" * 5000))


# ----------------------------------------------------------------------------- specs
def test_huge_range_is_refused_at_once():
    start = time.monotonic()
    with pytest.raises(FmauditError, match=r"fam/seed<0\.\.99999999>: expands to more than"):
        parse_member_specs(["fam/seed<0..99999999>"])
    assert time.monotonic() - start < 1.0


def test_ranges_that_multiply_are_capped():
    with pytest.raises(FmauditError, match="expands to more than"):
        expand_ranges("a<0..99>b<0..99>")
    assert len(expand_ranges(f"m<1..{MAX_MEMBERS}>")) == MAX_MEMBERS


def test_total_members_are_capped():
    with pytest.raises(FmauditError, match=f"more than {MAX_MEMBERS} members in all"):
        parse_member_specs(["a<0..999>", "b<0..999>"])


def test_range_bound_with_too_many_digits():
    with pytest.raises(FmauditError, match="range bound too long"):
        expand_ranges("m<0.." + "9" * 5000 + ">")


# ----------------------------------------------------------------------------- the CLI
def _corrupt_header(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00" * 1000)


def _plain_bert(folder: Path) -> None:
    from transformers import BertModel

    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    shutil.rmtree(folder)
    save_member(folder, BertModel(tiny_model("bert", len(tok), 5, tok=tok).config), tok)


@pytest.mark.parametrize(("make_bad", "needle"), [
    (drop_every_second_tensor, "the checkpoint lacks"),
    (_plain_bert, "the checkpoint lacks"),
    (_corrupt_header, "cannot load its weights"),
    (lambda d: edit_config(d, num_hidden_layers="two"), "config.json: not a usable model config"),
], ids=["dropped-tensors", "no-lm-head", "corrupt-header", "config-type"])
def test_cli_exits_2_in_one_line(family, tmp_path, make_bad, needle):
    bad = copy_member(family, tmp_path)
    make_bad(bad)
    env = child_env(HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fmaudit", "-q", "report", str(family / "bert" / "seed1"),
         str(bad), "--corpus", str(family / "r.fa"), "--samples", "6", "--seq-len", "32",
         "--fisher-samples", "2", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("fmaudit: error:"), proc.stderr
    assert needle in lines[0] and str(bad.name) in lines[0], proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_missing_member_beside_local_ones_is_not_looked_up_on_the_hub(family, monkeypatch):
    monkeypatch.chdir(family)
    monkeypatch.setattr(mload, "_hub_download", lambda *a, **k: pytest.fail("went to the Hub"))
    with pytest.raises(FmauditError, match=r"bert/seed7: no such folder \(bert/ is a local"):
        mload.resolve_member(MemberSpec("bert/seed7"))


@pytest.mark.parametrize(("flags", "py", "pickle"), [
    ({}, False, False),
    ({"trust_remote_code": True}, True, False),
    ({"allow_pickle": True}, False, True),
])
def test_hub_files_fetched_follow_the_flags(family, monkeypatch, flags, py, pickle):
    """A custom architecture's code (*.py) is fetched only with --trust-remote-code, which
    then needs it to build the model; pickle weights only with --allow-pickle."""
    import huggingface_hub

    asked = {}

    def snapshot_download(repo_id, **kwargs):
        asked.update(kwargs)
        return str(family / "bert" / "seed0")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    member = mload.resolve_member(MemberSpec("org/dna-model"), **flags)
    assert member.source == "hub"
    patterns = asked["allow_patterns"]
    assert ("*.py" in patterns) == py
    assert ("pytorch_model.bin" in patterns) == pickle
    assert {"config.json", "*.safetensors", "tokenizer.json"} <= set(patterns)
