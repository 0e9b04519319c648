"""Recipes: shipped files, mirroring, validation by name, overrides, round trips."""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from fmaudit.errors import FmauditError
from fmaudit.training.recipes import (
    FIELD_NAMES,
    Recipe,
    load_recipe,
    parse_recipe,
    recipe_names,
    resolve_tokenizer,
)

REPO = Path(__file__).resolve().parents[2]


def test_shipped_recipes_are_mirrored_byte_identical() -> None:
    package = resources.files("fmaudit") / "recipes"
    for name in recipe_names():
        shipped = (package / f"{name}.toml").read_bytes()
        mirrored = (REPO / "recipes" / f"{name}.toml").read_bytes()
        assert shipped == mirrored, f"recipes/{name}.toml differs from the packaged copy"


@pytest.mark.parametrize("name", ["tiny", "bert-4m", "bert-20m", "bert-90m"])
def test_shipped_recipes_load_and_name_themselves(name: str) -> None:
    r = load_recipe(name)
    assert r.name == name
    assert r.total_steps > 0
    # every key in the file is a field (no silently ignored keys), and the file sets them all
    raw = tomllib.loads((resources.files("fmaudit") / "recipes" / f"{name}.toml").read_text())
    assert set(raw) == set(FIELD_NAMES)


@pytest.mark.parametrize(("name", "shape"), [
    ("bert-4m", (256, 6, 8, 512)),
    ("bert-20m", (512, 8, 8, 1024)),
    ("bert-90m", (768, 12, 12, 3072)),
])
def test_architectures_match_the_issue(name: str, shape: tuple[int, int, int, int]) -> None:
    r = load_recipe(name)
    assert (r.hidden_size, r.num_layers, r.num_heads, r.intermediate_size) == shape


def test_bert_90m_is_the_study_setting() -> None:
    r = load_recipe("bert-90m")
    assert (r.seq_len, r.batch_size, r.lr, r.schedule, r.warmup_fraction, r.grad_clip,
            r.mask_prob, r.objective) == (512, 96, 1e-4, "cosine", 0.1, 0.5, 0.15, "mlm")
    # ~5B tokens: the step count is the token budget over the tokens of one global batch
    assert r.total_steps == math.ceil(5_000_000_000 / (96 * 512))
    assert r.total_steps * r.batch_size * r.seq_len >= 5_000_000_000
    assert r.warmup_steps == int(0.1 * r.total_steps)


def test_unknown_recipe_lists_the_valid_names() -> None:
    with pytest.raises(FmauditError) as err:
        load_recipe("bert-base")
    msg = str(err.value)
    assert "--recipe bert-base" in msg
    for name in recipe_names():
        assert name in msg


def test_a_folder_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(FmauditError, match=f"--recipe {tmp_path}: is a folder"):
        load_recipe(str(tmp_path))


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(load_recipe("tiny").to_toml() + "hiden_size = 32\n")
    with pytest.raises(FmauditError) as err:
        load_recipe(str(path))
    assert "'hiden_size'" in str(err.value)
    assert "hidden_size" in str(err.value)  # the suggestion
    assert str(path) in str(err.value)


def test_tables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FmauditError, match=r"\[model\]"):
        parse_recipe("[model]\nhidden_size = 3\n", "x.toml")


@pytest.mark.parametrize(("key", "value"), [
    ("lr", 0.0), ("lr", -1e-3), ("batch_size", 0), ("seq_len", -4), ("num_heads", 0),
    ("hidden_size", 65),  # not a multiple of num_heads (2)
    ("grad_accum", 3),  # 16 is not a multiple of 3
    ("objective", "mlmx"), ("schedule", "exp"), ("warmup_fraction", 1.0),
    ("warmup_fraction", -0.1), ("mask_prob", 0.0), ("mask_prob", 1.5), ("dropout", 1.0),
    ("grad_clip", -1.0), ("adam_beta2", 1.0), ("tokenizer", "kmer:9"), ("tokenizer", "wordpiece"),
    ("eval_every", 0), ("save_every", -1), ("data_seed", -2), ("max_steps", -1),
])
def test_bad_values_are_named(key: str, value: object) -> None:
    with pytest.raises(FmauditError) as err:
        load_recipe("tiny").replace(source="test", **{key: value})
    msg = str(err.value)
    assert msg.startswith("test: ")
    assert key in msg


@pytest.mark.parametrize(("key", "value"), [("lr", "fast"), ("batch_size", 1.5),
                                            ("batch_size", True), ("objective", 3)])
def test_wrong_types_are_named(key: str, value: object) -> None:
    with pytest.raises(FmauditError, match=f"{key} must be"):
        load_recipe("tiny").replace(**{key: value})


def test_no_budget_is_refused() -> None:
    with pytest.raises(FmauditError, match="max_steps"):
        load_recipe("tiny").replace(max_steps=0, max_tokens=0)


def test_token_budget_gives_ceil_steps() -> None:
    r = load_recipe("tiny").replace(max_steps=0, max_tokens=10_000)
    assert r.total_steps == math.ceil(10_000 / (r.batch_size * r.seq_len))


def test_overrides_change_only_their_field() -> None:
    base = load_recipe("tiny")
    new = base.replace(lr=1e-3, batch_size=None)  # None = flag not given
    assert new.lr == 1e-3
    assert {k: v for k, v in new.to_dict().items() if k != "lr"} == \
        {k: v for k, v in base.to_dict().items() if k != "lr"}


def test_a_recipe_file_is_checked_with_the_flags_applied(tmp_path: Path) -> None:
    """A file valid only with its command-line overrides (no budget of its own; a batch that
    only the --batch-size flag makes divisible by grad_accum) loads; a problem the flags
    introduce names the command line, one the file keeps names the file."""
    tiny = load_recipe("tiny").to_dict()
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in tiny.items()
             if k not in ("max_steps", "max_tokens", "grad_accum", "batch_size")]
    path = tmp_path / "r.toml"
    path.write_text("\n".join([*lines, "grad_accum = 3", "batch_size = 32"]) + "\n")
    with pytest.raises(FmauditError, match=f"{path}: "):
        load_recipe(str(path))
    recipe = load_recipe(str(path), {"max_steps": 2, "batch_size": 24})
    assert (recipe.max_steps, recipe.batch_size, recipe.grad_accum) == (2, 24, 3)
    with pytest.raises(FmauditError, match="command line: batch_size"):
        load_recipe(str(path), {"max_steps": 2, "batch_size": 25})
    with pytest.raises(FmauditError, match=f"{path}: batch_size"):
        load_recipe(str(path), {"max_steps": 2})
    # a rule between two keys names the flag that set either of them
    with pytest.raises(FmauditError, match="command line: batch_size"):
        load_recipe("tiny", {"grad_accum": 3})
    with pytest.raises(FmauditError, match="command line: hidden_size"):
        load_recipe("tiny", {"num_heads": 5})
    with pytest.raises(FmauditError, match=f"{path}: batch_size"):
        load_recipe(str(path), {"max_steps": 2, "lr": 1e-3})


def test_toml_round_trip_is_exact() -> None:
    for name in recipe_names():
        r = load_recipe(name).replace(lr=3.0000000000000004e-4, tokenizer="bpe:999")
        assert parse_recipe(r.to_toml(), "round-trip") == r


def test_tokenizer_spec_is_canonical() -> None:
    assert load_recipe("tiny").replace(tokenizer="kmer").tokenizer == "kmer:6"
    assert load_recipe("tiny").replace(tokenizer="KMER:3").tokenizer == "kmer:3"


def test_auto_tokenizer_resolves_per_corpus_kind() -> None:
    r = load_recipe("tiny")
    assert r.tokenizer == "auto"
    assert resolve_tokenizer(r, "dna").tokenizer == "kmer:6"
    assert resolve_tokenizer(r, "text").tokenizer == "bpe:4101"
    assert resolve_tokenizer(r.replace(tokenizer="char"), "dna").tokenizer == "char"


def test_fingerprint_ignores_name_and_checkpoint_cadence() -> None:
    r = load_recipe("tiny")
    assert r.fingerprint() == r.replace(name="renamed", save_every=7).fingerprint()
    assert r.fingerprint() != r.replace(lr=r.lr * 2).fingerprint()
    assert r.fingerprint() != r.replace(data_seed=1).fingerprint()


def test_recipe_is_frozen() -> None:
    r = Recipe(max_steps=1)
    with pytest.raises(AttributeError):
        r.lr = 1.0  # type: ignore[misc]
