"""Resolve members to local folders (disk or the Hugging Face Hub cache) and load them safely.

Secure by default: safetensors only (a pickle checkpoint needs ``allow_pickle``), and no
``trust_remote_code`` unless asked. Only the files an audit needs are downloaded.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmaudit.errors import FmauditError
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


def _hub_download(spec: MemberSpec, allow_pickle: bool, retries: int = 3) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = HUB_PATTERNS + (list(PICKLE_WEIGHTS) if allow_pickle else [])
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
            last = exc
        time.sleep(min(2.0 ** attempt, 5.0))
    raise FmauditError(f"{spec.label}: could not reach the Hub after {retries} tries ({last}); "
                       "check the network or use a local folder")


def resolve_member(spec: MemberSpec, allow_pickle: bool = False) -> ResolvedMember:
    """A local folder if ``spec.source`` is one, else a Hub id fetched into the HF cache."""
    local = Path(spec.source).expanduser()
    if local.is_dir():
        if spec.revision is not None:
            raise FmauditError(f"{spec.label}: a local folder has no revision (drop '@...')")
        path, revision, source = local.resolve(), None, "local"
    elif local.exists():
        raise FmauditError(f"{spec.source}: is a file, expected a model folder or a Hub id")
    elif spec.source.startswith((".", "/", "~")) or not _REPO_ID.match(spec.source):
        raise FmauditError(f"{spec.source}: no such folder (and not a Hub id of the form org/name)")
    else:
        path = _hub_download(spec, allow_pickle)
        revision = path.name if _COMMIT.match(path.name) else spec.revision
        source = "hub"
    manifest = None
    if (path / MANIFEST).is_file():
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise FmauditError(f"{path / MANIFEST}: unreadable manifest ({exc})") from None
    return ResolvedMember(id=spec.label, path=path, revision=revision, source=source,
                          manifest=manifest)


def init_dir_of(member: ResolvedMember) -> str | None:
    """The member's untrained initialisation folder: the manifest's ``init`` (relative to the
    member folder), else ``init/<name>`` beside it (fmaudit train's layout); None if absent."""
    manifest = member.manifest or {}
    candidates = []
    if manifest.get("init"):
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
    if raw.get("auto_map") and not trust_remote_code:
        raise FmauditError(f"{member.id}: the model needs its own code from the repository "
                           "(config auto_map); pass --trust-remote-code if you trust it")
    try:
        return AutoConfig.from_pretrained(member.path, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise FmauditError(f"{member.id}: cannot read config.json ({exc})") from None


def detect_objective(config: Any) -> str:
    """``mlm`` or ``clm`` from the architectures list, then the model type, then is_decoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    for arch in getattr(config, "architectures", None) or []:
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


def load_model(member: ResolvedMember, config: Any, objective: str, *,
               allow_pickle: bool = False, trust_remote_code: bool = False,
               attn_implementation: str | None = "sdpa") -> Any:
    """Load weights with the Auto class of the objective, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if objective == MLM else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"config": config, "trust_remote_code": trust_remote_code,
                              "use_safetensors": None if allow_pickle else True}
    try:
        try:
            model = auto.from_pretrained(member.path, attn_implementation=attn_implementation,
                                         **kwargs)
        except (ValueError, ImportError):  # architecture without SDPA support
            model = auto.from_pretrained(member.path, **kwargs)
    except OSError as exc:
        raise FmauditError(f"{member.id}: cannot load weights ({exc})") from None
    model.eval()
    return model


def load_tokenizer(member: ResolvedMember, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(member.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise FmauditError(f"{member.id}: cannot load its tokenizer ({exc})") from None
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
