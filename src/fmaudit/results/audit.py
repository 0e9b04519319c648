"""The audit: resolve each ensemble, check it, run the passes, assemble report.json.

One prediction pass per ensemble feeds every prediction, disagreement and contextual metric; the
Fisher pass runs on its own (smaller) window budget; static-embedding metrics read the weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmaudit import progress
from fmaudit.errors import FmauditError
from fmaudit.models import load as mload
from fmaudit.models.specs import parse_member_specs
from fmaudit.passes import distributed
from fmaudit.provenance import command_line, now_utc, tool_info
from fmaudit.results import SCHEMA_VERSION

DEFAULT_TOP_P = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_K = (1, 3, 5, 10, 20, 50, 100, 1000)
ANALYSES = ("predictions", "embeddings", "fisher")
# The per-ensemble report sections each analysis writes (tests check this against real audits).
ANALYSIS_SECTIONS = {
    "predictions": ("entropy", "kl_uniform_bits", "cross_entropy_bits", "perplexity", "accuracy",
                    "rank_profile", "unigram_cross_entropy_bits", "unigram_source",
                    "context_gain_bits", "uniform_entropy_bits", "disagreement"),
    "embeddings": ("static_embeddings", "contextual_embeddings"),
    "fisher": ("fisher",),
}


def analysis_of(metric: str) -> str | None:
    """The analysis whose section holds a gate metric path (``static_embeddings.topk_overlap
    @k=10`` -> ``embeddings``); None for paths outside the analyses' sections."""
    root = metric.split(".", 1)[0].split("@", 1)[0].split("[", 1)[0]
    return next((a for a, keys in ANALYSIS_SECTIONS.items() if root in keys), None)
UNK_WARN = 0.05
UNIGRAM_FIT_WINDOWS = 4096


@dataclass
class AuditConfig:
    ensembles: dict[str, list[str]]
    corpus: dict[str | None, str] = field(default_factory=dict)  # None key: applies to all
    regions: tuple[str, ...] = ()
    samples: int = 256
    seq_len: int | None = None
    batch_size: int = 16
    seed: int = 0
    mask_prob: float = 0.15
    top_p: tuple[float, ...] = DEFAULT_TOP_P
    top_p_rule: str = "nucleus"
    k: tuple[int, ...] = DEFAULT_K
    analyses: tuple[str, ...] = ANALYSES
    fisher_estimator: str = "per-token"
    fisher_labels: str = "empirical"
    fisher_samples: int = 64
    contextual_windows: int = 512
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "auto"
    argv: list[str] | None = None
    resume_dir: str | None = None  # where the passes save resume state (None: nowhere)
    resume_every: float = 300.0  # seconds between two saves of the prediction pass


@dataclass
class Member:
    resolved: mload.ResolvedMember
    config: Any
    objective: str
    tokenizer: Any
    model: Any = None


# ----------------------------------------------------------------------------- ensembles
def resolve_ensemble(name: str, specs: list[str], cfg: AuditConfig) -> list[Member]:
    """Resolve and check members: weights safe, same objective, same vocabulary and output size."""
    members = []
    for spec in parse_member_specs(specs):
        resolved = mload.resolve_member(spec, allow_pickle=cfg.allow_pickle,
                                        trust_remote_code=cfg.trust_remote_code)
        mload.check_weights(resolved, cfg.allow_pickle)
        config = mload.load_config(resolved, cfg.trust_remote_code)
        objective = mload.detect_objective(config)
        tok = mload.load_tokenizer(resolved, cfg.trust_remote_code)
        members.append(Member(resolved, config, objective, tok))
    if not members:
        raise FmauditError(f"ensemble {name!r}: no members")
    seen: dict[Path, str] = {}
    for m in members:  # the same weights twice would fake perfect agreement
        places = {m.resolved.path.resolve()} | mload.weight_files(m.resolved, cfg.allow_pickle)
        shared = sorted(places & seen.keys())
        if shared:
            raise FmauditError(f"{m.resolved.id}: the same checkpoint as {seen[shared[0]]} "
                               f"({shared[0]}); list each member once")
        seen.update(dict.fromkeys(places, m.resolved.id))
    ref = members[0]
    for m in members:  # the scores are over the tokenizer's tokens, one output entry each
        tokens, outputs = len(m.tokenizer), int(m.config.vocab_size)
        if tokens > outputs:  # (a padded output layer, outputs > tokens, is read in part)
            raise FmauditError(f"{m.resolved.id}: its tokenizer has {tokens} tokens but its "
                               f"output layer only {outputs} entries (tokens beyond the output "
                               "layer cannot be scored)")
    if ref.objective == mload.MLM and ref.tokenizer.mask_token_id is None:
        raise FmauditError(f"{ref.resolved.id}: a masked language model whose tokenizer has no "
                           "mask token")
    ref_vocab = ref.tokenizer.get_vocab()
    for m in members[1:]:
        if m.objective != ref.objective:
            raise FmauditError(f"{m.resolved.id}: objective {m.objective} differs from "
                               f"{ref.resolved.id} ({ref.objective})")
        vocab = m.tokenizer.get_vocab()
        if vocab != ref_vocab:
            diff = sorted(set(vocab.items()) ^ set(ref_vocab.items()))[:3]
            raise FmauditError(f"{m.resolved.id}: tokenizer vocabulary differs from "
                               f"{ref.resolved.id} ({len(vocab)} vs {len(ref_vocab)} tokens; "
                               f"e.g. {diff})")
        if m.config.vocab_size != ref.config.vocab_size:
            raise FmauditError(f"{m.resolved.id}: output size {m.config.vocab_size} differs from "
                               f"{ref.resolved.id} ({ref.config.vocab_size})")
        # a seed ensemble shares its architecture; the embedding comparisons need one width
        # and the layer-wise ones (contextual CKA, Fisher per block) one depth
        for attr, what in (("hidden_size", "hidden size"), ("num_hidden_layers", "depth")):
            value, ref_value = (getattr(c, attr, None) for c in (m.config, ref.config))
            if value != ref_value:
                raise FmauditError(f"{m.resolved.id}: {what} {value} differs from "
                                   f"{ref.resolved.id} ({ref_value}); members of one ensemble "
                                   "must share the architecture (compare families with "
                                   "--ensemble)")
    return members


def pick_device(requested: str) -> torch.device:
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise FmauditError(f"--device {requested!r}: not a torch device") from None
        _check_available(device, requested)
        return device
    state = distributed.state()
    return state.device


def _check_available(device: torch.device, requested: str) -> None:
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    available = backend is not None and hasattr(backend, "is_available") and \
        backend.is_available()
    if device.type == "mps":
        available = torch.backends.mps.is_available()
    if not available:
        raise FmauditError(f"--device {requested!r}: no {device.type} device is available "
                           "here (use --device auto or cpu)")
    count = backend.device_count() if hasattr(backend, "device_count") else None
    if device.index is not None and count is not None and device.index >= count:
        raise FmauditError(f"--device {requested!r}: this machine has {count} {device.type} "
                           f"device(s)")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    table = {"float32": None, "fp32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if requested not in table:
        raise FmauditError(f"--dtype {requested!r}: expected auto, float32, bf16 or fp16")
    return table[requested]


def max_positions(config: Any) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            # RoBERTa/ESM reserve padding_idx + 1 positions
            offset = (getattr(config, "pad_token_id", 0) or 0) + 1 \
                if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") \
                else 0
            return value - offset
    return None


def eval_corpus(name: str, members: list[Member], cfg: AuditConfig) -> tuple[Any, str]:
    """The evaluation corpus and split: --corpus NAME=FILE, a bare --corpus, or the manifest's
    held-out split."""
    from fmaudit.corpus import CorpusOptions, open_corpus

    path = cfg.corpus.get(name) or cfg.corpus.get(None)
    manifest = members[0].resolved.manifest
    where = str(members[0].resolved.path / "fmaudit.json")
    if path is not None:
        options = CorpusOptions(regions=tuple(cfg.regions)) if cfg.regions else CorpusOptions()
        corpus = open_corpus(path, options)
        # a user-supplied corpus is evaluated whole unless it is the manifest's own corpus: the
        # same file, or a copy of it (the report hashes the file anyway, for its fingerprint)
        split = "all"
        if manifest and (_same_file(manifest_corpus_path(manifest, where), path)
                         or _same_content(corpus, manifest, where)):
            corpus = _open_heldout(path, manifest, cfg.regions, where)
            split = "holdout"
            _warn_if_changed(corpus, manifest, where)
        return corpus, split
    if manifest is None:
        raise FmauditError(f"ensemble {name!r}: --corpus is required (its members carry no "
                           "fmaudit manifest naming their held-out data)")
    mpath = manifest_corpus_path(manifest, where)
    if mpath is None or not Path(mpath).exists():
        raise FmauditError(f"ensemble {name!r}: the manifest's corpus {mpath} is not available "
                           "here; pass --corpus")
    corpus = _open_heldout(mpath, manifest, cfg.regions, where)
    _warn_if_changed(corpus, manifest, where)
    return corpus, "holdout"


def _open_heldout(path: str, manifest: dict, regions: Sequence[str], where: str) -> Any:
    """The corpus with the members' training options (their held-out split), and --regions.
    A holdout problem is the manifest's and --regions', not a --holdout this command lacks."""
    from fmaudit.corpus import open_corpus

    try:
        return open_corpus(path, manifest_corpus_options(manifest, tuple(regions), where))
    except FmauditError as exc:
        message = str(exc)
        if not message.startswith("--holdout"):
            raise
        holdout = manifest_corpus_options(manifest, (), where).holdout
        if regions and "not among the selected regions" in message:
            raise FmauditError(f"--regions {','.join(regions)}: leaves out the members' "
                               f"held-out contig(s) {holdout} ({where}); include them in "
                               "--regions") from None
        reason = message.split(": ", 1)[-1]
        raise FmauditError(f"{where}: the members' held-out split (holdout {holdout}): "
                           f"{reason}") from None


def _warn_if_changed(corpus: Any, manifest: dict, where: str) -> None:
    """The held-out split is only held out from the file the members were trained on."""
    trained_on = _manifest_corpus(manifest, where).get("file_sha256")
    if trained_on and distributed.is_main() and corpus.file_sha256() != trained_on:
        progress.warn(f"{corpus.path}: the file differs from the one the members were trained "
                      f"on ({where} records sha256 {str(trained_on)[:12]}...); its held-out "
                      "split may overlap their training data")


def _same_content(corpus: Any, manifest: dict, where: str) -> bool:
    trained_on = _manifest_corpus(manifest, where).get("file_sha256")
    return bool(trained_on) and corpus.file_sha256() == trained_on


def _same_file(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _manifest_corpus(manifest: Any, where: str = "fmaudit.json") -> dict:
    """The manifest's ``corpus`` object, checked: a hand-edited or corrupt manifest is bad
    input, not a crash."""
    corpus = manifest.get("corpus") if isinstance(manifest, dict) else None
    if corpus is None and isinstance(manifest, dict):
        return {}
    if not isinstance(corpus, dict) or not isinstance(corpus.get("options") or {}, dict) or \
            not isinstance(corpus.get("path") or "", str):
        raise FmauditError(f"{where}: the member manifest's 'corpus' entry is malformed "
                           "(expected an object with path and options; pass --corpus)")
    return corpus


def manifest_corpus_path(manifest: dict, where: str = "fmaudit.json") -> str | None:
    return _manifest_corpus(manifest, where).get("path")


def manifest_corpus_options(manifest: dict, regions: tuple[str, ...] = (),
                            where: str = "fmaudit.json") -> Any:
    from fmaudit.corpus import CorpusOptions

    corpus = _manifest_corpus(manifest, where)
    opts = dict(corpus.get("options") or {})
    known = set(CorpusOptions.__dataclass_fields__)
    opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items() if k in known}
    if regions:
        opts["regions"] = tuple(regions)
    return CorpusOptions(**opts)


# ----------------------------------------------------------------------------- metrics glue
def _member_stat(values: list[float]) -> dict:
    from fmaudit.metrics import mean_std_members

    return mean_std_members(values)


def prediction_section(result: Any, unigram_ce: float | None, unigram_source: str,
                       vocab_size: int) -> dict:
    from fmaudit.metrics import mean_std_vectors

    ms = result.members
    ce = [m["cross_entropy_bits"] for m in ms]
    out = {
        "entropy": {"bits": _member_stat([m["entropy_bits"] for m in ms]),
                    "normalized": _member_stat([m["entropy_normalized"] for m in ms])},
        "kl_uniform_bits": _member_stat([m["kl_uniform_bits"] for m in ms]),
        "cross_entropy_bits": _member_stat(ce),
        "perplexity": _member_stat([m["perplexity"] for m in ms]),
        "accuracy": _member_stat([m["accuracy"] for m in ms]),
        "rank_profile": {"ranks": list(range(1, len(ms[0]["rank_profile"]) + 1)),
                         **mean_std_vectors([m["rank_profile"] for m in ms])},
        "unigram_cross_entropy_bits": unigram_ce,
        "unigram_source": unigram_source,
        "context_gain_bits": _member_stat([None if unigram_ce is None else unigram_ce - c
                                           for c in ce]),
        "uniform_entropy_bits": math.log2(vocab_size),
    }
    d = result.disagreement
    out["disagreement"] = {
        "top_p_rule": d["top_p_rule"],
        "pairs": d["pairs"],
        "js_distance": d["js_distance"],
        "argmax_agreement": d["argmax_agreement"] if d["pairs"] else None,
    }
    return out


def unigram_reference(corpus: Any, tokenizer: Any, eval_split: str, length: int, seq_len: int,
                      samples: int, seed: int) -> tuple[torch.Tensor, str]:
    """Token counts for the unigram model: a seeded sample of the train split when the corpus
    has one distinct from the evaluated split, else the evaluation windows themselves."""
    from fmaudit.tokenizer import encode_windows

    vocab = len(tokenizer)
    counts = torch.zeros(vocab, dtype=torch.float64)
    source = "train split"
    try:
        if eval_split == "all":
            raise FmauditError("no separate train split")
        # a seeded sample of the train split (all of it when it is small): a fixed budget,
        # ~2M tokens at 512 per window, ample for a unigram and independent of --samples
        texts = corpus.windows("train", length=length, n=UNIGRAM_FIT_WINDOWS, seed=seed + 1,
                               allow_fewer=True).texts
        if not texts:
            raise FmauditError("the train split has no clean window")
        source = f"train split ({len(texts)} windows)"
    except FmauditError:
        texts = corpus.windows(eval_split, length=length, n=samples, seed=seed).texts
        source = f"evaluation windows ({len(texts)})"
    for start in range(0, len(texts), 64):
        enc = encode_windows(tokenizer, texts[start:start + 64], seq_len)
        keep = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        counts += torch.bincount(enc["input_ids"][keep], minlength=vocab).double()
    return counts, source


def unigram_cross_entropy(train_counts: torch.Tensor, label_counts: torch.Tensor) -> float:
    """Add-one smoothed unigram model p(v) = (c_v + 1) / (N + V) fitted on ``train_counts``;
    its cross-entropy in bits over the evaluated labels, given as their histogram:
    CE = -sum_v n_v log2 p(v) / sum_v n_v."""
    vocab = train_counts.numel()
    logp = torch.log2((train_counts + 1.0) / (train_counts.sum() + vocab))
    return float(-(label_counts * logp).sum() / label_counts.sum())


# ----------------------------------------------------------------------------- the audit
def run_audit(cfg: AuditConfig) -> dict:
    """Audit every ensemble in ``cfg`` and return the report dict (docs/report-schema.md)."""
    from fmaudit.passes.predictions import UnusableStateError, run_prediction_pass
    from fmaudit.tokenizer import unk_fraction, window_chars

    for a in cfg.analyses:
        if a not in ANALYSES:
            raise FmauditError(f"--analyses: unknown analysis {a!r} (choose from "
                               f"{', '.join(ANALYSES)})")
    if cfg.samples < 1:
        raise FmauditError("--samples: must be at least 1")
    started = time.perf_counter()
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    rank, world = distributed.rank_and_world()
    torch.manual_seed(cfg.seed)
    timing: dict[str, float] = {}
    ensembles: dict[str, dict] = {}
    # resolve everything before any compute, so a bad member fails fast
    resolved = {name: resolve_ensemble(name, specs, cfg) for name, specs in cfg.ensembles.items()}
    corpora = {name: eval_corpus(name, members, cfg) for name, members in resolved.items()}
    for name, members in resolved.items():
        corpus, split = corpora[name]
        ref = members[0]
        tok = ref.tokenizer
        # the tokenizer's tokens: a padded output layer's extra entries are no token
        vocab_size = len(tok)
        limits = [n for n in (max_positions(m.config) for m in members) if n is not None]
        limit = min(limits) if limits else None  # every member must take the windows
        seq_len = cfg.seq_len or min(limit or 512, 512)
        if limit is not None and seq_len > limit:
            raise FmauditError(f"--seq-len {seq_len}: longer than the model's {limit} positions")
        length = window_chars(tok, seq_len, corpus)
        # places only: texts are read back per batch, so memory does not grow with --samples
        texts = corpus.windows(split, length=length, n=cfg.samples, seed=cfg.seed).texts
        if not texts:
            raise FmauditError(f"ensemble {name!r}: the evaluation set is empty")
        entry: dict[str, Any] = {"name": name}
        for m in members:
            m.model = mload.load_model(m.resolved, m.config, m.objective,
                                       allow_pickle=cfg.allow_pickle,
                                       trust_remote_code=cfg.trust_remote_code).to(device)
        from fmaudit.tokenizer import encode_windows

        probe = encode_windows(tok, texts[: min(len(texts), 64)], seq_len)
        unk = float(unk_fraction(tok, probe))
        if unk > UNK_WARN and distributed.is_main():
            progress.warn(f"ensemble {name!r}: {unk:.1%} of the corpus tokens are [UNK]; the "
                          "corpus does not fit the tokenizer")
        entry["corpus"] = {**_corpus_summary(corpus), "split": split, "windows": len(texts),
                           "window_chars": length, "unk_fraction": unk}
        entry["objective"] = ref.objective
        entry["vocab_size"] = vocab_size
        entry["seq_len"] = seq_len
        entry["tokenizer"] = {"class": type(tok).__name__, "spec": _tokenizer_spec(members),
                              "size": len(tok), "special_tokens": list(tok.all_special_tokens)}
        entry["members"] = [_member_info(m) for m in members]

        make_batches = functools.partial(_batches_for, texts, tok, seq_len, ref.objective, cfg,
                                         rank, world)
        store = _resume_store(cfg, len(ensembles), name, members, entry["corpus"], seq_len,
                              dtype, device, rank, world)
        pooled = None
        if "predictions" in cfg.analyses or "embeddings" in cfg.analyses:
            t0 = time.perf_counter()
            ctx = min(cfg.contextual_windows if "embeddings" in cfg.analyses else 0, len(texts))
            part, part_key = "predictions", {"contextual_windows": ctx}
            saved = store.load(part, part_key) if store is not None else None
            if saved is not None and saved.progress:
                progress.info(f"{name}: resuming the prediction pass after {saved.progress} "
                              f"batches ({store.path(part)})")
            for attempt in (saved, None):  # a state that does not fit: warned, run afresh
                bar = progress.bar(total=len(texts), desc=f"{name}: predictions", unit="win")
                try:
                    result = run_prediction_pass(
                        [m.model for m in members], [m.resolved.id for m in members],
                        make_batches(start_batch=attempt.progress if attempt else 0),
                        vocab_size, cfg.top_p, cfg.top_p_rule, device, dtype,
                        contextual_windows=ctx, progress=bar, resume=store, resume_part=part,
                        saved=attempt, resume_key=part_key)
                    break
                except UnusableStateError as exc:
                    store.ignore(part, f"its tensors do not fit this pass ({exc})")
                finally:
                    bar.close()
            entry["corpus"]["positions"] = result.positions
            pooled = result.pooled
            if "predictions" in cfg.analyses:
                counts, source = unigram_reference(corpus, tok, split, length, seq_len,
                                                   cfg.samples, cfg.seed)
                uce = unigram_cross_entropy(counts, result.label_counts)
                entry.update(prediction_section(result, uce, source, vocab_size))
            timing[f"{name}.predictions"] = time.perf_counter() - t0
        if "embeddings" in cfg.analyses:
            t0 = time.perf_counter()
            from fmaudit.passes.embeddings import contextual_section, static_section

            # weights and gathered states are the same on every process: only the main one,
            # which writes the report, spends the CPU on them
            if distributed.is_main():
                entry["static_embeddings"] = static_section(members, tok, cfg.k, cfg.seed)
                if pooled is not None:
                    entry["contextual_embeddings"] = contextual_section(pooled)
            timing[f"{name}.embeddings"] = time.perf_counter() - t0
        if "fisher" in cfg.analyses:
            t0 = time.perf_counter()
            entry["fisher"] = fisher_section(members, make_batches, cfg, device, dtype,
                                             min(cfg.fisher_samples, len(texts)), store)
            timing[f"{name}.fisher"] = time.perf_counter() - t0
        for m in members:
            m.model = None
        ensembles[name] = entry
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_info(),
        "created": now_utc(),
        "command": command_line(cfg.argv),
        "settings": {
            "seed": cfg.seed, "samples": cfg.samples, "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size, "mask_prob": cfg.mask_prob, "top_p": list(cfg.top_p),
            "top_p_rule": cfg.top_p_rule, "k": list(cfg.k), "analyses": list(cfg.analyses),
            "fisher_estimator": cfg.fisher_estimator, "fisher_labels": cfg.fisher_labels,
            "fisher_samples": cfg.fisher_samples, "contextual_windows": cfg.contextual_windows,
            "regions": list(cfg.regions), "processes": world, "device": device.type,
            "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
        },
        "timing": {"seconds": time.perf_counter() - started, "passes": timing},
        "gate": None,
        "ensembles": ensembles,
    }


def _batches_for(texts: Sequence[str], tok: Any, seq_len: int, objective: str, cfg: AuditConfig,
                 rank: int, world: int, limit_windows: int | None = None,
                 batch_size: int | None = None, start_batch: int = 0,
                 whole_batches: bool = False) -> Any:
    from fmaudit.passes.eval_data import batches

    return batches(texts, tok, seq_len, objective, cfg.seed, cfg.mask_prob,
                   batch_size or cfg.batch_size, rank=rank, world=world, limit=limit_windows,
                   start_batch=start_batch, whole_batches=whole_batches)


def _resume_store(cfg: AuditConfig, index: int, name: str, members: list[Member],
                  corpus: dict, seq_len: int, dtype: torch.dtype | None, device: torch.device,
                  rank: int, world: int) -> Any:
    """This ensemble's resume files under ``cfg.resume_dir`` (None without one). Their key is
    everything the passes' sums depend on: each member's files (path, size, modification
    time), the corpus and its windows, the settings, the device and the process layout."""
    from fmaudit.passes.resume import STATE_DIR, ResumeStore, file_stamp

    if cfg.resume_dir is None:
        return None
    key = {
        "tool": tool_info(),  # other code or libraries may sum differently
        "ensemble": [index, name],
        "members": [[m.resolved.id, m.resolved.revision,
                     [file_stamp(f) for f in sorted(m.resolved.path.iterdir())
                      if f.is_file() and not f.name.startswith(".")]] for m in members],
        "corpus": corpus,
        "seq_len": seq_len,
        "settings": [cfg.seed, cfg.samples, cfg.batch_size, cfg.mask_prob, list(cfg.top_p),
                     cfg.top_p_rule, list(cfg.regions), cfg.fisher_estimator,
                     cfg.fisher_labels, cfg.fisher_samples],
        "device": [device.type, str(dtype)],
    }
    return ResumeStore(Path(cfg.resume_dir) / STATE_DIR, key, rank, world, cfg.resume_every,
                       prefix=f"e{index}")


def _corpus_summary(corpus: Any) -> dict:
    summary = corpus.summary()
    keep = ("path", "name", "kind", "fingerprint")
    out = {k: summary.get(k) for k in keep}
    out["options"] = summary.get("options")
    out["holdout"] = summary.get("holdout")
    return out


def _tokenizer_spec(members: list[Member]) -> str | None:
    """The tokenizer spec fmaudit trained the members with (``kmer:6``, ``bpe:4101``), when
    every member's manifest names the same one; None otherwise (e.g. Hub models)."""
    specs = {str(((m.resolved.manifest or {}).get("tokenizer") or {}).get("spec"))
             for m in members}
    return specs.pop() if len(specs) == 1 and "None" not in specs else None


def _member_info(m: Member) -> dict:
    manifest = m.resolved.manifest or {}
    init = mload.init_dir_of(m.resolved)
    return {
        "id": m.resolved.id,
        "revision": m.resolved.revision,
        "path": str(m.resolved.path),
        "source": m.resolved.source,
        "parameters": mload.parameter_count(m.model) if m.model is not None else None,
        "objective": m.objective,
        "architecture": (getattr(m.config, "architectures", None) or [type(m.model).__name__])[0],
        "seed": manifest.get("seed"),
        "init": init,
    }


def fisher_section(members: list[Member], make_batches: Any, cfg: AuditConfig,
                   device: torch.device, dtype: torch.dtype | None, n_windows: int,
                   store: Any = None) -> dict:
    """The report's ``fisher`` block; with a resume ``store``, each member's (reduced) result
    is saved when it is done, and a resumed run reads it instead of running it again."""
    from fmaudit.metrics import coarse_split, group_shares, mean_std_members, shares_over_members
    from fmaudit.passes.fisher import run_fisher_pass
    from fmaudit.passes.resume import on_every_process

    results = []
    for i, m in enumerate(members):
        part = f"fisher{i}"
        if store is not None:
            saved = _saved_fisher(store, part)
            # every process reads it back, or every process runs it (the pass all-reduces)
            if on_every_process(saved is not None):
                results.append(saved)
                continue
            if saved is not None:
                store.ignore(part, "another process has no usable state for this member")
        bar = progress.bar(total=None, desc=f"{m.resolved.id}: fisher", unit="batch")
        results.append(run_fisher_pass(
            # whole batches to each process: the batch estimator squares batch means, and the
            # per-token one then computes its gradients in the single process's batch shapes
            m.model, make_batches(n_windows, min(cfg.batch_size, 8), whole_batches=True),
            estimator=cfg.fisher_estimator, labels=cfg.fisher_labels, seed=cfg.seed,
            device=device, dtype=dtype, vocab_size=len(m.tokenizer)))
        bar.close()
        if store is not None:  # float sums round-trip exactly through JSON
            store.save(part, 1, {}, extra=dataclasses.asdict(results[-1]))
    groups = results[0].groups
    tied = results[0].tied

    def view(sums_of: list[dict[str, float]]) -> tuple[dict, dict]:
        shares = [group_shares(s) for s in sums_of]
        return shares_over_members(shares), shares_over_members([coarse_split(s) for s in shares])

    share, coarse = view([r.sums for r in results])
    out = {
        "estimator": cfg.fisher_estimator,
        "labels": cfg.fisher_labels,
        "tokens": results[0].tokens,
        "windows": n_windows,
        "tied": tied,
        "groups": groups,
        "share": share,
        "coarse": coarse,
        "totals": mean_std_members([sum(r.sums.values()) for r in results]),
        "note": _fisher_note(cfg.fisher_estimator, cfg.fisher_labels, tied),
    }
    if tied:
        share_t, coarse_t = view([r.sums_tied for r in results])
        out["share_tied"] = share_t
        out["coarse_tied"] = coarse_t
    return out


def _saved_fisher(store: Any, part: str) -> Any:
    """A member's saved Fisher result, checked (None when there is none or it is unusable:
    warned)."""
    import math

    from fmaudit.passes.fisher import FisherResult

    saved = store.load(part)
    if saved is None:
        return None
    extra = saved.extra if isinstance(saved.extra, dict) else {}

    def group_sums(sums: Any) -> bool:
        return (isinstance(sums, dict) and bool(sums)
                and set(sums) == set(extra.get("groups") or ())
                and all(isinstance(v, int | float) and math.isfinite(v) and v >= 0
                        for v in sums.values()))

    ok = (isinstance(extra.get("groups"), list) and group_sums(extra.get("sums"))
          and isinstance(extra.get("tied"), bool)
          and (extra.get("sums_tied") is None if not extra.get("tied")
               else group_sums(extra.get("sums_tied")))
          and isinstance(extra.get("tokens"), int) and extra["tokens"] >= 0)
    if not ok or set(extra) != {f.name for f in dataclasses.fields(FisherResult)}:
        store.ignore(part, "it does not hold a Fisher result")
        return None
    return FisherResult(**extra)


def _fisher_note(estimator: str, labels: str, tied: bool) -> str:
    parts = []
    if estimator == "per-token":
        parts.append("Per-token empirical Fisher: mean squared gradient of -log p(y|x) over "
                     "one random predicted token per window.")
    else:
        parts.append("Batch estimator (the study's): squared batch-mean gradient summed over "
                     "batches / tokens; it mostly measures the squared mean gradient and "
                     "depends on the batch size.")
    if labels == "sampled":
        parts.append("Labels drawn from the model's own predictions (true Fisher).")
    else:
        parts.append("Labels are the true tokens (empirical Fisher), which can mislead when "
                     "predictions are near uniform.")
    if tied:
        parts.append("The output projection is tied to the input embeddings: 'share' squares "
                     "the two roles' gradients apart (output role under head); 'share_tied' "
                     "squares their sum and counts the matrix once, under embeddings.")
    return " ".join(parts)
