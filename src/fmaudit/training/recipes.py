"""Training recipes: plain TOML files turned into one frozen, validated :class:`Recipe`.

A recipe fixes everything that changes what a member learns: architecture, objective, tokenizer,
sequence length, optimiser, schedule, token/step budget, masking, data seed and eval cadence.
Runtime settings that do not (output folder, seeds, process count, logging) stay on the command
line. Recipes are data: read with :mod:`tomllib`, never executed; an unknown key is rejected by
name, every value is checked, and CLI flags override fields through :meth:`Recipe.replace`.

Shipped recipes live in ``fmaudit/recipes/<name>.toml`` (mirrored byte for byte in the
repository's top-level ``recipes/`` folder): ``tiny``, ``bert-4m``, ``bert-20m``, ``bert-90m``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError

OBJECTIVES = ("mlm", "clm")
SCHEDULES = ("cosine", "linear", "constant")
# "auto" resolves per corpus kind (see resolve_tokenizer): the study's 6-mers for DNA and a BPE
# of the same vocabulary size (4096 + 5 specials) for text.
AUTO_TOKENIZER = {"dna": "kmer:6", "text": "bpe:4101"}
SHIPPED_RECIPES = ("tiny", "bert-4m", "bert-20m", "bert-90m")
# Upper bounds: far above any model fmaudit is meant to train, low enough that a typo fails
# here, naming its key, rather than deep inside torch (an overflowed tensor size, an
# allocation that cannot succeed).
LIMITS = {"seq_len": 65_536, "hidden_size": 16_384, "num_layers": 256, "num_heads": 256,
          "intermediate_size": 65_536, "batch_size": 2**20, "eval_windows": 2**20,
          "eval_every": 10**12, "save_every": 10**12, "max_steps": 10**12,
          "max_tokens": 10**18, "data_seed": 2**32 - 1}
MAX_PARAMETERS = 10**10  # transformer blocks and position embeddings, vocabulary aside


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one training run (shared by every member of an ensemble).

    Budget: ``total_steps = max_steps`` if ``max_steps > 0`` else
    ``ceil(max_tokens / (batch_size * seq_len))``. ``batch_size`` is the GLOBAL batch (windows per
    optimiser step, summed over processes and accumulation micro-steps), so the data each
    optimiser step sees does not depend on how many processes run it.
    """

    name: str = "custom"
    objective: str = "mlm"
    tokenizer: str = "auto"
    seq_len: int = 128  # tokens per window, [CLS] and [SEP] included
    # architecture (BERT for mlm, GPT-2 for clm)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.1
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    schedule: str = "cosine"
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    # budget
    max_steps: int = 0
    max_tokens: int = 0
    # data
    mask_prob: float = 0.15
    data_seed: int = 0
    # evaluation and checkpoints
    eval_every: int = 100
    eval_windows: int = 64
    save_every: int = 1000

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived values -------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Optimiser steps of the run."""
        if self.max_steps > 0:
            return self.max_steps
        return math.ceil(self.max_tokens / (self.batch_size * self.seq_len))

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_fraction * self.total_steps)

    def replace(self, source: str = "override", **changes: Any) -> Recipe:
        """A copy with some fields changed (CLI flags); ``None`` values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        _check_keys(changes, source)
        return _construct({**self.to_dict(), **changes}, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved recipe as TOML that :func:`load_recipe` reads back to an equal Recipe."""
        lines = [f"# fmaudit recipe (resolved): {self.name}"]
        for f in fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of the fields that change training.

        ``name`` and ``save_every`` are left out: renaming a recipe file or checkpointing more
        often does not make a different run.
        """
        data = {k: v for k, v in self.to_dict().items() if k not in _NOT_IDENTITY}
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


_NOT_IDENTITY = ("name", "save_every")
FIELD_NAMES = tuple(f.name for f in fields(Recipe))
_FIELD_TYPES = {f.name: f.type for f in fields(Recipe)}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form; TOML accepts 1e-05 and 0.1
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def _fail(source: str, key: str, problem: str, fix: str | None = None) -> FmauditError:
    msg = f"{source}: {key} {problem}"
    return FmauditError(msg + (f" ({fix})" if fix else ""))


def _check_keys(data: dict[str, Any], source: str) -> None:
    for key in data:
        if key not in _FIELD_TYPES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"valid keys: {', '.join(FIELD_NAMES)}"
            raise FmauditError(f"{source}: unknown key {key!r} ({hint})")


def _construct(data: dict[str, Any], source: str,
               overridden: tuple[str, tuple[str, ...]] | None = None) -> Recipe:
    """Type-check raw values (TOML gives int/float/str/bool), then build and validate.

    ``overridden``: ``(source, keys)`` of values that replaced the recipe's (command-line
    flags); a problem with one of those keys names that source instead.
    """
    def where(key: str) -> str:
        return overridden[0] if overridden is not None and key in overridden[1] else source

    clean: dict[str, Any] = {}
    for key, value in data.items():
        kind = _FIELD_TYPES[key]
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _fail(where(key), key, f"must be an integer, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _fail(where(key), key, f"must be a number, got {value!r}")
            value = float(value)
        elif kind == "str" and not isinstance(value, str):
            raise _fail(where(key), key, f"must be a string, got {value!r}")
        clean[key] = value
    try:
        return Recipe(**clean)
    except _RecipeValueError as exc:
        # a rule between two keys is the doing of whichever of them a flag set
        blamed = next((where(k) for k in (exc.key, *exc.related) if where(k) != source), source)
        raise _fail(blamed, exc.key, exc.problem, exc.fix) from None


class _RecipeValueError(ValueError):
    def __init__(self, key: str, problem: str, fix: str | None = None,
                 related: tuple[str, ...] = ()) -> None:
        super().__init__(f"{key} {problem}")
        self.key, self.problem, self.fix, self.related = key, problem, fix, related


def _validate(r: Recipe) -> None:
    def need(ok: bool, key: str, problem: str, fix: str | None = None,
             related: tuple[str, ...] = ()) -> None:
        if not ok:
            raise _RecipeValueError(key, problem, fix, related)

    for key in ("seq_len", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                "batch_size", "grad_accum", "eval_every", "eval_windows"):
        need(getattr(r, key) > 0, key, f"must be a positive integer, got {getattr(r, key)}")
    for key in ("max_steps", "max_tokens", "save_every", "data_seed"):
        need(getattr(r, key) >= 0, key, f"must be >= 0, got {getattr(r, key)}")
    for key, limit in LIMITS.items():
        need(getattr(r, key) <= limit, key, f"must be at most {limit:,}, got {getattr(r, key):,}")
    size = r.num_layers * (4 * r.hidden_size**2 + 2 * r.hidden_size * r.intermediate_size) \
        + r.seq_len * r.hidden_size
    need(size <= MAX_PARAMETERS, "hidden_size",
         f"({r.hidden_size}), num_layers ({r.num_layers}) and intermediate_size "
         f"({r.intermediate_size}) make about {size:,} parameters, more than "
         f"{MAX_PARAMETERS:,}", "make the model smaller")
    need(r.objective in OBJECTIVES, "objective", f"must be one of {', '.join(OBJECTIVES)}, "
         f"got {r.objective!r}")
    need(r.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}, "
         f"got {r.schedule!r}")
    if r.tokenizer != "auto":
        from fmaudit.tokenizer.specs import parse_spec

        try:
            spec = str(parse_spec(r.tokenizer))
        except FmauditError as exc:
            # parse_spec names --tokenizer; keep only its reason and fix
            raise _RecipeValueError("tokenizer", f"{r.tokenizer!r}: "
                                    + str(exc).split(": ", 1)[-1]) from None
        object.__setattr__(r, "tokenizer", spec)  # canonical form: "kmer" -> "kmer:6"
    need(r.seq_len >= 4, "seq_len", f"must be >= 4 ([CLS] + tokens + [SEP]), got {r.seq_len}")
    need(r.hidden_size % r.num_heads == 0, "hidden_size",
         f"({r.hidden_size}) must be a multiple of num_heads ({r.num_heads})",
         related=("num_heads",))
    need(r.batch_size % r.grad_accum == 0, "batch_size",
         f"({r.batch_size}) must be a multiple of grad_accum ({r.grad_accum})",
         related=("grad_accum",))
    need(math.isfinite(r.lr) and r.lr > 0, "lr", f"must be > 0, got {r.lr}")
    need(math.isfinite(r.weight_decay) and r.weight_decay >= 0, "weight_decay",
         f"must be >= 0, got {r.weight_decay}")
    need(0 <= r.adam_beta1 < 1, "adam_beta1", f"must be in [0, 1), got {r.adam_beta1}")
    need(0 <= r.adam_beta2 < 1, "adam_beta2", f"must be in [0, 1), got {r.adam_beta2}")
    need(math.isfinite(r.adam_eps) and r.adam_eps > 0, "adam_eps", f"must be > 0, got {r.adam_eps}")
    need(0 <= r.warmup_fraction < 1, "warmup_fraction",
         f"must be in [0, 1), got {r.warmup_fraction}")
    need(math.isfinite(r.grad_clip) and r.grad_clip >= 0, "grad_clip",
         f"must be >= 0 (0 = off), got {r.grad_clip}")
    need(0 <= r.dropout < 1, "dropout", f"must be in [0, 1), got {r.dropout}")
    need(0 < r.mask_prob <= 1, "mask_prob", f"must be in (0, 1], got {r.mask_prob}")
    need(r.max_steps > 0 or r.max_tokens > 0, "max_steps",
         "and max_tokens are both 0", "set a step or token budget")


# -- loading ------------------------------------------------------------------------------------

def recipe_names() -> list[str]:
    """Names of the training recipes shipped with fmaudit (the folder also holds gate policies)."""
    return list(SHIPPED_RECIPES)


def parse_recipe(text: str, source: str, overrides: dict[str, Any] | None = None,
                 override_source: str = "command line") -> Recipe:
    """A Recipe from TOML text; ``source`` names the file in error messages. ``overrides``
    (e.g. command-line flags) replace the file's values BEFORE the recipe is validated, so a
    file that is only valid with them (no step budget of its own, say) is accepted."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FmauditError(f"{source}: not valid TOML ({exc})") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise FmauditError(f"{source}: unexpected table [{key}] (recipes are flat "
                               "key = value lists)")
    _check_keys(data, source)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(overrides, override_source)
    return _construct({**data, **overrides}, source, (override_source, tuple(overrides)))


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """A shipped recipe by name (``tiny``) or a recipe file (``my.toml``), with ``overrides``
    (command-line flags; see :func:`parse_recipe`) applied before it is validated.

    Raises:
        FmauditError: unknown name (the valid names are listed), unreadable file, unknown key,
            bad value (the key is named).
    """
    text_name = str(name_or_path)
    path = Path(text_name).expanduser()
    if text_name.endswith(".toml") or path.is_file() or "/" in text_name:
        if path.is_dir():
            raise FmauditError(f"--recipe {text_name}: is a folder (name a recipe .toml file)")
        if not path.is_file():
            raise FmauditError(f"--recipe {text_name}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FmauditError(f"--recipe {text_name}: cannot read ({exc})") from None
        return parse_recipe(text, str(path), overrides)
    names = recipe_names()
    if text_name not in names:
        raise FmauditError(f"--recipe {text_name}: unknown recipe (valid: {', '.join(names)}; "
                           "or give a path to a .toml file)")
    text = (resources.files("fmaudit") / "recipes" / f"{text_name}.toml").read_text("utf-8")
    return parse_recipe(text, f"recipe {text_name}", overrides)


def resolve_tokenizer(recipe: Recipe, corpus_kind: str) -> Recipe:
    """Replace ``tokenizer = "auto"`` by the spec for the corpus kind (``dna`` or ``text``)."""
    if recipe.tokenizer != "auto":
        return recipe
    if corpus_kind not in AUTO_TOKENIZER:
        raise FmauditError(f"corpus kind {corpus_kind!r}: no automatic tokenizer "
                           "(pass --tokenizer)")
    return recipe.replace(tokenizer=AUTO_TOKENIZER[corpus_kind])
