"""Resolve members to local folders (disk or the Hugging Face Hub cache) and load them safely.

Secure by default: safetensors only (a pickle checkpoint needs ``allow_pickle``), and no
``trust_remote_code`` unless asked. Only the files an audit needs are downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError
from fmaudit.io import read_json_object
from fmaudit.models.specs import MemberSpec

MANIFEST = "fmaudit.json"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# What an audit needs from a repo: config, weights, tokenizer files, our manifest.
HUB_PATTERNS = [
    "config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "*.model", MANIFEST, "fmaudit_tokenizer.json",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

MLM = "mlm"
CLM = "clm"

# Files that hold a tokenizer's vocabulary or its description: a folder with none of them has
# no tokenizer (transformers would silently build an empty one from config.json's model type).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "special_tokens_map.json", "added_tokens.json")
# Structural config values that must be positive integers for the model to be built at all.
POSITIVE_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "max_position_embeddings")
# transformers loggers that print the multi-line "LOAD REPORT" table while weights load; we
# report missing or mismatched weights ourselves, in one line.
_LOAD_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report",
                 "transformers.core_model_loading")


@dataclass
class ResolvedMember:
    """A member resolved to a local folder. ``revision`` is the Hub commit, or None for a folder."""

    id: str
    path: Path
    revision: str | None
    source: str  # "local" | "hub"
    manifest: dict[str, Any] | None = field(default=None)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    """HF_HUB_CACHE, else HF_HOME/hub, read at call time (huggingface_hub reads them once, at
    import); None lets huggingface_hub use its default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_patterns(allow_pickle: bool = False, trust_remote_code: bool = False) -> list[str]:
    """The files fetched from a Hub repository: config, safetensors, tokenizer and manifest;
    pickle weights only with ``allow_pickle``; the model's own code (``*.py``, which custom
    architectures such as DNABERT-2 or HyenaDNA need) only with ``trust_remote_code``."""
    return [*HUB_PATTERNS, *(PICKLE_WEIGHTS if allow_pickle else ()),
            *(("*.py",) if trust_remote_code else ())]


def _hub_download(spec: MemberSpec, allow_pickle: bool, retries: int = 3,
                  trust_remote_code: bool = False) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = hub_patterns(allow_pickle, trust_remote_code)
    last: Exception | None = None
    for attempt in range(retries):
        try:
            return Path(snapshot_download(spec.source, revision=spec.revision,
                                          allow_patterns=patterns, cache_dir=_cache_dir(),
                                          local_files_only=_offline(),
                                          endpoint=os.environ.get("HF_ENDPOINT") or None))
        except RevisionNotFoundError:
            raise FmauditError(f"{spec.label}: revision {spec.revision!r} not found on the Hub") \
                from None
        except GatedRepoError:
            raise FmauditError(f"{spec.label}: gated repository (accept its terms and set "
                               "HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise FmauditError(f"{spec.label}: no such local folder or Hub model (check the id, "
                               "or set HF_TOKEN for a private repo)") from None
        except LocalEntryNotFoundError:
            if _offline():
                raise FmauditError(f"{spec.label}: not in the Hub cache and HF_HUB_OFFLINE is set "
                                   "(download it once online, or point HF_HUB_CACHE at a cache "
                                   "that holds it)") from None
            last = LocalEntryNotFoundError(str(spec.label))
        except HFValidationError as exc:
            raise FmauditError(f"{spec.label}: not a valid Hub id ({exc})") from None
        except Exception as exc:  # connection errors: OSError or httpx transport errors
            if "HTTPStatusError" in type(exc).__name__ or getattr(exc, "response", None):
                raise FmauditError(f"{spec.label}: the Hub answered with an error ({exc})") \
                    from None
            if _offline():  # nothing was sent: the local cache itself is unreadable
                raise FmauditError(f"{spec.label}: cannot read it from the Hub cache "
                                   f"{_cache_dir() or '(default)'} ({type(exc).__name__}: "
                                   f"{exc}); HF_HUB_OFFLINE is set") from None
            last = exc
        time.sleep(min(2.0 ** attempt, 5.0))
    raise FmauditError(f"{spec.label}: could not reach the Hub after {retries} tries ({last}); "
                       "check the network or use a local folder")


def resolve_member(spec: MemberSpec, allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> ResolvedMember:
    """A local folder if ``spec.source`` is one, else a Hub id fetched into the HF cache
    (:func:`hub_patterns` says which of its files)."""
    shown = spec.source if len(spec.source) <= 120 else spec.source[:117] + "..."
    try:
        local = Path(spec.source).expanduser()
        is_dir, exists = local.is_dir(), local.exists()
        resolved = local.resolve() if is_dir else None
    except RuntimeError:  # '~user' with no such user, or no home directory to expand '~' to
        raise FmauditError(f"{shown}: cannot expand '~' (no such user or no home directory)") \
            from None
    except OSError as exc:  # e.g. a name too long for the file system, or a symlink loop
        raise FmauditError(f"{shown}: not a usable path ({exc.strerror or exc})") from None
    if resolved is not None:
        if spec.revision is not None:
            raise FmauditError(f"{spec.label}: a local folder has no revision (drop '@...')")
        path, revision, source = resolved, None, "local"
    elif exists:
        raise FmauditError(f"{spec.source}: is a file, expected a model folder or a Hub id")
    elif spec.source.startswith((".", "/", "~")) or not _REPO_ID.match(spec.source):
        raise FmauditError(f"{spec.source}: no such folder (and not a Hub id of the form org/name)")
    elif Path(spec.source.split("/")[0]).is_dir():
        # 'runs/seed7' where runs/ is a local folder: a missing member, not a Hub repository
        raise FmauditError(f"{spec.source}: no such folder ({spec.source.split('/')[0]}/ is a "
                           "local folder; for the Hub id of that name, run from elsewhere)")
    else:
        path = _hub_download(spec, allow_pickle, trust_remote_code=trust_remote_code)
        revision = path.name if _COMMIT.match(path.name) else spec.revision
        source = "hub"
    manifest = None
    if (path / MANIFEST).is_file():
        manifest = read_json_object(path / MANIFEST, "fmaudit manifest",
                                    "restore it, or remove it and pass --corpus")
    return ResolvedMember(id=spec.label, path=path, revision=revision, source=source,
                          manifest=manifest)


def init_dir_of(member: ResolvedMember) -> str | None:
    """The member's untrained initialisation folder: the manifest's ``init`` (relative to the
    member folder), else ``init/<name>`` beside it (fmaudit train's layout); None if absent."""
    manifest = member.manifest or {}
    candidates = []
    if manifest.get("init") and isinstance(manifest["init"], str):
        candidates.append(member.path / manifest["init"])
    candidates.append(member.path.parent / "init" / member.path.name)
    for c in candidates:
        if (c / "config.json").is_file():
            return str(c.resolve())
    return None


def check_weights(member: ResolvedMember, allow_pickle: bool) -> None:
    """Refuse pickle-only checkpoints unless ``allow_pickle``; refuse folders with no weights."""
    names = {p.name for p in member.path.iterdir()}
    if names & set(SAFE_WEIGHTS) or any(n.endswith(".safetensors") for n in names):
        _check_shard_index(member, allow_pickle)  # an index may still name pickle shards
        return
    if names & set(PICKLE_WEIGHTS):
        if allow_pickle:
            return
        raise FmauditError(f"{member.id}: only a pickle checkpoint (pytorch_model.bin), which can "
                           "run arbitrary code when loaded; pass --allow-pickle if you trust it")
    raise FmauditError(f"{member.id}: no model weights (model.safetensors) in {member.path}")


def load_config(member: ResolvedMember, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    cfg_path = member.path / "config.json"
    if not cfg_path.is_file():
        raise FmauditError(f"{member.id}: no config.json in {member.path}")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise FmauditError(f"{cfg_path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise FmauditError(f"{cfg_path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(raw, dict):
        raise FmauditError(f"{cfg_path}: expected a JSON object, found {type(raw).__name__}")
    if raw.get("auto_map") and not trust_remote_code:
        raise FmauditError(f"{member.id}: the model needs its own code from the repository "
                           "(config auto_map); pass --trust-remote-code if you trust it")
    try:
        config = AutoConfig.from_pretrained(member.path, trust_remote_code=trust_remote_code)
    except MemoryError:
        raise
    except Exception as exc:  # transformers validates fields with many exception types
        raise FmauditError(f"{cfg_path}: not a usable model config ({_one_line(exc)})") from None
    for name in POSITIVE_CONFIG_FIELDS:
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FmauditError(f"{cfg_path}: {name} is {value!r}, expected a positive integer")
    return config


def detect_objective(config: Any) -> str:
    """``mlm`` or ``clm`` from the architectures list, then the model type, then is_decoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    for arch in getattr(config, "architectures", None) or []:
        if not isinstance(arch, str):  # a hand-edited config ([null]): decide by the type
            continue
        if arch.endswith("ForMaskedLM"):
            return MLM
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return CLM
    if getattr(config, "is_decoder", False):
        return CLM
    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return MLM
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CLM
    raise FmauditError(f"model type {model_type!r}: neither a masked nor a causal language model")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, short enough for a one-line CLI error."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report (dozens of stderr lines) for the duration of a load."""

    def below_error(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    # a filter, not setLevel: transformers 5 runs an extra tensor-parallel check, with its own
    # warnings, when the modeling_utils logger's level is WARNING or above
    loggers = [logging.getLogger(name) for name in _LOAD_LOGGERS]
    for lg in loggers:
        lg.addFilter(below_error)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(below_error)


def _check_shard_index(member: ResolvedMember, allow_pickle: bool) -> list[str]:
    """The shard files a sharded checkpoint's index names ([] for a single-file checkpoint).

    Each must be a file in the member's folder, named plainly (an index could otherwise send
    the loader to ``../other/shard`` or an absolute path), and without ``allow_pickle`` a
    ``.safetensors`` file: transformers loads whatever the index names, a pickle ``.bin``
    shard included. A missing shard would otherwise be a bare KeyError or FileNotFoundError.
    """
    names = {p.name for p in member.path.iterdir()}
    if "model.safetensors" in names:
        return []
    if "model.safetensors.index.json" in names:
        index = member.path / "model.safetensors.index.json"
    elif allow_pickle and "pytorch_model.bin" not in names and PICKLE_WEIGHTS[1] in names:
        index = member.path / PICKLE_WEIGHTS[1]
    else:
        return []
    try:
        raw = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise FmauditError(f"{index}: unreadable shard index ({exc})") from None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FmauditError(f"{index}: no 'weight_map' naming the weight shards")
    shards = sorted({str(v) for v in weight_map.values()})
    outside = [s for s in shards if Path(s).name != s or s in (".", "..")]
    if outside:
        raise FmauditError(f"{index}: names weight shard(s) outside {member.path}: "
                           f"{', '.join(outside[:3])} (shards are files beside the index)")
    if not allow_pickle:
        unsafe = [s for s in shards if not s.endswith(".safetensors")]
        if unsafe:
            raise FmauditError(f"{index}: names shard(s) that are not safetensors "
                               f"({', '.join(unsafe[:3])}), which can run arbitrary code when "
                               "loaded; pass --allow-pickle if you trust them")
    absent = [s for s in shards if not (member.path / s).is_file()]
    if absent:
        raise FmauditError(f"{index}: names weight shard(s) not in {member.path}: "
                           f"{', '.join(absent[:3])}")
    return shards


def weight_files(member: ResolvedMember, allow_pickle: bool) -> frozenset[Path]:
    """The files the member's weights are read from, links resolved: two members that share
    one (a symlink, a Hub blob with the same content) hold the same weights."""
    shards = _check_shard_index(member, allow_pickle)
    names = shards or [n for n in ("model.safetensors", "pytorch_model.bin")
                       if (member.path / n).is_file()]
    return frozenset((member.path / n).resolve() for n in names)


def _check_loading_info(member: ResolvedMember, model: Any, info: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not fill the model: transformers re-initialises
    missing or wrongly shaped weights at random, and the audit would measure noise as if trained.
    Unexpected extra tensors outside the blocks (a pooler, a classification head) are harmless
    and ignored."""
    missing = set(info.get("missing_keys") or ())
    # weights tied to a loaded one (the output layer to the input embeddings) are legitimately
    # absent from the file; transformers normally drops them already, this is a safety net
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    missing = {k for k in missing if not (k in tied and tied[k] not in missing)}
    if missing:
        shown = ", ".join(sorted(missing)[:3])
        raise FmauditError(f"{member.id}: the checkpoint lacks {len(missing)} weight(s) a "
                           f"{type(model).__name__} needs (e.g. {shown}); is it a model "
                           "without its language-model head, or incomplete?")
    # extra tensors inside the transformer blocks mean config.json declares fewer blocks than
    # were trained: the model would silently run a truncated network
    from fmaudit.models.groups import group_of

    extra_blocks = sorted(k for k in info.get("unexpected_keys") or ()
                          if group_of(k).startswith("layer."))
    if extra_blocks:
        raise FmauditError(f"{member.id}: the checkpoint holds {len(extra_blocks)} weight(s) of "
                           f"transformer blocks config.json does not declare (e.g. "
                           f"{extra_blocks[0]}); config.json does not match the weights")
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda t: str(t[0]))
    if mismatched:
        key, ckpt, want = mismatched[0]
        raise FmauditError(f"{member.id}: {len(mismatched)} weight(s) have another shape than "
                           f"config.json implies (e.g. {key}: {tuple(ckpt)} in the checkpoint, "
                           f"{tuple(want)} from the config); config.json does not match the "
                           "weights")


def load_model(member: ResolvedMember, config: Any, objective: str, *,
               allow_pickle: bool = False, trust_remote_code: bool = False,
               attn_implementation: str | None = "sdpa") -> Any:
    """Load weights with the Auto class of the objective, in eval mode.

    Any failure to read the weights, and any weight the model needs that the checkpoint lacks
    or holds in another shape, is a FmauditError naming the member.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    files = weight_files(member, allow_pickle)  # checks a shard index before any read
    auto = AutoModelForMaskedLM if objective == MLM else AutoModelForCausalLM
    # ignore_mismatched_sizes: report wrong shapes through the loading info (checked below)
    # instead of a RuntimeError after a long printed report
    kwargs: dict[str, Any] = {"config": config, "trust_remote_code": trust_remote_code,
                              "use_safetensors": None if allow_pickle else True,
                              "output_loading_info": True, "ignore_mismatched_sizes": True}
    oom = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    try:
        with _quiet_load_report():
            try:
                model, info = auto.from_pretrained(
                    member.path, attn_implementation=attn_implementation, **kwargs)
            except (ValueError, ImportError):  # architecture without SDPA support
                model, info = auto.from_pretrained(member.path, **kwargs)
    except oom:
        raise
    except Exception as exc:  # corrupt or truncated files, bad pickles, configs the weights
        # do not fit: whatever the loader raises, the member's files are at fault
        # (chained, so --debug shows the loader's own traceback)
        raise FmauditError(f"{member.id}: cannot load its weights, the checkpoint looks corrupt "
                           f"or does not fit config.json ({_one_line(exc)})") from exc
    _check_loading_info(member, model, info)
    _check_weight_dtypes(member, model, files)
    model.eval()
    return model


def _check_weight_dtypes(member: ResolvedMember, model: Any, files: frozenset[Path]) -> None:
    """Refuse integer (quantised) or 8-bit float weights: transformers casts them to the
    model's float type without a word, and the audit would score the garbage. Only the
    parameters are checked (integer buffers such as position ids are normal)."""
    from safetensors import safe_open

    params = {name for name, _ in model.named_parameters()}
    for file in sorted(f for f in files if f.suffix == ".safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), no __contains__)
                if key not in params:
                    continue
                dtype = f.get_slice(key).get_dtype()
                if not dtype.startswith(("F", "BF")) or dtype.startswith("F8"):
                    raise FmauditError(f"{member.id}: weight {key} is stored as {dtype} (a "
                                       "quantised or broken checkpoint); fmaudit audits "
                                       "float16/bfloat16/float32 weights")


def load_tokenizer(member: ResolvedMember, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    names = {p.name for p in member.path.iterdir()}
    has_files = bool(names & set(TOKENIZER_FILES)) or any(
        n.endswith((".model", ".spm", ".tiktoken")) or "vocab" in n for n in names)
    # remote code may build its tokenizer without files; otherwise transformers would make an
    # empty tokenizer from config.json's model type and we would audit with it
    if not has_files and not trust_remote_code:
        raise FmauditError(f"{member.id}: no tokenizer files (tokenizer.json, vocab.txt, ...) in "
                           f"{member.path}; save the tokenizer with the model")
    try:
        tok = AutoTokenizer.from_pretrained(member.path, trust_remote_code=trust_remote_code)
    except MemoryError:
        raise
    except Exception as exc:  # malformed tokenizer files fail with KeyError, TypeError, ...
        raise FmauditError(f"{member.id}: cannot load its tokenizer ({_one_line(exc)})") from None
    if tok.pad_token is None:
        # GPT-2/Pythia-style tokenizers have no padding token; padded positions are masked out
        # by the attention mask and never predicted, so any special token will do
        fallback = tok.eos_token or tok.unk_token or tok.bos_token
        if fallback is None:
            raise FmauditError(f"{member.id}: its tokenizer has no padding, end or unknown "
                               "token to pad windows with")
        tok.pad_token = fallback
    return tok


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
