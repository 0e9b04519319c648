"""Train a matched seed ensemble: data once, then one member per seed (accelerate style).

``prepare_data`` opens the corpus, builds the tokenizer, sizes windows and encodes the held-out
set; ``train_ensemble`` loops over seeds: build the model from the seed, save it as the init
baseline, train it (:func:`fmaudit.training.loop.train_member`), write the checkpoint and its
manifest in one atomic move. Finished members are skipped, interrupted ones resume.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmaudit import progress
from fmaudit.errors import FmauditError
from fmaudit.io import atomic_dir, atomic_write_json, atomic_write_text, output_dir
from fmaudit.training import manifest as mf
from fmaudit.training.recipes import Recipe, load_recipe, resolve_tokenizer

VARY = ("data-order",)
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
MAX_UNK = 0.05  # a tokenizer with more [UNK] than this on the corpus does not fit it
MAX_SEED = 2**32 - 1  # numpy's global seed, which transformers.set_seed sets, is 32-bit
MAX_MEMBERS = 10_000


@dataclass
class PreparedData:
    """What every member shares: corpus, tokenizer, window size, encoded windows, eval set."""

    corpus: Any
    recipe: Recipe  # tokenizer resolved
    tokenizer: Any
    window_chars: int
    train_encoded: dict[str, Any] | None  # tiled mode: all train windows (compact dtypes)
    train_windows: int  # tiled: exact count; sampled: the grid estimate (length // window)
    eval_set: Any
    summary: dict[str, Any]


def _encode_compact(tokenizer: Any, texts: list[str], seq_len: int) -> dict[str, Any]:
    """Encode in blocks and store int32 ids / uint8 masks (a quarter of the int64 memory)."""
    import torch

    from fmaudit.tokenizer import encode_windows

    parts: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [],
                                   "special_tokens_mask": []}
    for i in range(0, len(texts), 4096):
        enc = encode_windows(tokenizer, texts[i:i + 4096], seq_len)
        parts["input_ids"].append(enc["input_ids"].to(torch.int32))
        parts["attention_mask"].append(enc["attention_mask"].to(torch.uint8))
        parts["special_tokens_mask"].append(enc["special_tokens_mask"].to(torch.uint8))
    return {k: torch.cat(v) for k, v in parts.items()}


def prepare_data(corpus: Any, recipe: Recipe, *, tile_max_tokens: int | None = None
                 ) -> PreparedData:
    """Tokenizer, window length, train windows (tiled mode) and the held-out eval set.

    Raises:
        FmauditError: a tokenizer that does not fit the corpus (> 5% [UNK]), a train split
            smaller than one global batch, no held-out window.
    """
    from fmaudit.tokenizer import (
        build_tokenizer,
        check_tokenizer_fits,
        encode_windows,
        window_chars,
    )
    from fmaudit.training.data import TILE_MAX_TOKENS, EvalSet, LabelRule

    recipe = resolve_tokenizer(recipe, corpus.kind)
    tokenizer = build_tokenizer(recipe.tokenizer, corpus, model_max_length=recipe.seq_len)
    # window_chars first: encoding with truncation (check_tokenizer_fits) leaves the fast
    # tokenizer's truncation switched on, which would skew the characters-per-token estimate.
    length = window_chars(tokenizer, recipe.seq_len, corpus)
    unk = check_tokenizer_fits(tokenizer, corpus, seq_len=recipe.seq_len)
    if math.isnan(unk):  # not a single regular token: every window shorter than one token
        raise FmauditError(
            f"{corpus.path}: its train split yields no --tokenizer {recipe.tokenizer} token: "
            f"no window long enough for one is left{corpus.filter_note()} (use a larger corpus, "
            "or one with fewer N or IUPAC codes)")
    if not unk <= MAX_UNK:
        raise FmauditError(f"--tokenizer {recipe.tokenizer}: does not fit {corpus.path} "
                           f"({unk:.0%} of its tokens are [UNK]; use "
                           f"{'kmer:6' if corpus.kind == 'dna' else 'bpe:4101'} or char)")
    limit = TILE_MAX_TOKENS if tile_max_tokens is None else tile_max_tokens
    estimate = corpus.length("train") // length
    train_encoded = None
    if estimate * recipe.seq_len <= limit:
        texts = [w.text for w in corpus.windows("train", length)]
        available = len(texts)
        if texts:
            train_encoded = _encode_compact(tokenizer, texts, recipe.seq_len)
    else:
        available = estimate
    if available < recipe.batch_size:
        raise FmauditError(f"{corpus.path}: the train split ({corpus.length('train'):,} "
                           f"characters with --holdout {corpus.options.holdout}) holds "
                           f"{available} windows of {length:,} characters, fewer than one batch "
                           f"({recipe.batch_size}) (use a larger corpus, hold out less, or use "
                           "a smaller --batch-size or --seq-len)")
    held = corpus.windows("holdout", length, n=recipe.eval_windows, seed=0, allow_fewer=True)
    if not held:
        raise FmauditError(f"{corpus.path}: the held-out split has no window of {length:,} "
                           "characters (hold out more with --holdout, or use a smaller "
                           "--seq-len)")
    rule = LabelRule.from_tokenizer(tokenizer, recipe.objective, recipe.mask_prob)
    eval_set = EvalSet.build(encode_windows(tokenizer, [w.text for w in held], recipe.seq_len),
                             rule)
    return PreparedData(corpus, recipe, tokenizer, length, train_encoded, available, eval_set,
                        corpus.summary())


def make_stream(data: PreparedData, data_seed: int) -> Any:
    """The member's data stream: tiled over the encoded windows, or sampled from the corpus."""
    from fmaudit.tokenizer import encode_windows
    from fmaudit.training.data import LabelRule, sampled_stream, tiled_stream

    r = data.recipe
    rule = LabelRule.from_tokenizer(data.tokenizer, r.objective, r.mask_prob)
    if data.train_encoded is not None:
        return tiled_stream(data.train_encoded, r.batch_size, rule, data_seed)

    def draw(n: int, seed: int) -> list[str]:
        return [w.text for w in data.corpus.windows("train", data.window_chars, n=n, seed=seed)]

    def encode(texts: list[str]) -> dict[str, Any]:
        return encode_windows(data.tokenizer, texts, r.seq_len)

    # a chunk is at most half the train windows, so a chunk's draw never runs out of windows
    chunk_steps = max(1, min(64, data.train_windows // (2 * r.batch_size)))
    return sampled_stream(draw, encode, r.batch_size, rule, data_seed, chunk_steps=chunk_steps)


# -- runtime --------------------------------------------------------------------------------

def resolve_mixed_precision(value: str) -> str | None:
    """``auto``: bf16 on a CUDA GPU that supports it, else fp32 (``no``); an accelerate config
    or ``accelerate launch --mixed_precision`` (ACCELERATE_MIXED_PRECISION) wins over auto."""
    import torch

    if value not in MIXED_PRECISION:
        raise FmauditError(f"--mixed-precision {value!r}: must be one of "
                           f"{', '.join(MIXED_PRECISION)}")
    if value != "auto":
        return value
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # let accelerate read its launcher's setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _forget_accelerator_state() -> None:
    """Clear accelerate's per-process state. accelerate refuses an Accelerator with other
    settings (precision, device) than the process's first; a single process that trains again
    with others (a notebook, a script looping over recipes, the test suite on a GPU machine)
    starts from a clean state instead. Never for launched runs: the state holds the process
    group."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_accelerator(recipe: Recipe, mixed_precision: str, log_with: Sequence[str],
                     out: Path) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import LoggerType, ProjectConfiguration

    valid = [t.value for t in LoggerType]
    for name in log_with:
        if name not in valid:
            raise FmauditError(f"--log-with {name}: unknown tracker (valid: {', '.join(valid)})")
    # accelerate joins a CPU process group (gloo) only when told it runs on CPU; torchrun on a
    # GPU-less machine sets WORLD_SIZE, so say so then.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1

    def create() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing tracker is reported below, by name
            return Accelerator(
                cpu=launched and not torch.cuda.is_available(),
                mixed_precision=resolve_mixed_precision(mixed_precision),
                gradient_accumulation_steps=recipe.grad_accum,
                log_with=list(log_with) or None,
                project_config=ProjectConfiguration(project_dir=str(out),
                                                    logging_dir=str(out / "logs")),
            )

    try:
        accelerator = create()
    except ValueError as exc:  # an earlier Accelerator of this process had other settings
        if launched or "already been initialized" not in str(exc):
            raise
        _forget_accelerator_state()
        accelerator = create()
    if str(accelerator.mixed_precision) == "fp16" and accelerator.device.type == "cpu":
        # accelerate runs fp16 on the CPU as fp32 without a word, and the manifest would say
        # fp16 (the setting may come from --mixed-precision, a launcher or an accelerate config)
        raise FmauditError("--mixed-precision fp16: not available on the CPU (use bf16 or no, "
                           "or train on a GPU)")
    if accelerator.distributed_type.value == "DEEPSPEED":
        raise FmauditError("accelerate config: DeepSpeed is not supported by fmaudit train "
                           "(use DDP, or FSDP through an accelerate config file)")
    active = {getattr(t, "value", str(t)) for t in accelerator.log_with}
    missing = [n for n in log_with if n != "all" and n not in active]
    if missing:
        raise FmauditError(f"--log-with {missing[0]}: the tracker is not installed "
                           f"(pip install {missing[0].replace('_', '-')})")
    return accelerator


SMALL_HIDDEN = 256  # at or below this width a CPU step is too short to share between threads


@contextlib.contextmanager
def _cpu_settings(device_type: str, recipe: Recipe) -> Iterator[None]:
    """On CPU: deterministic kernels (they cost nothing there; a resumed run is bitwise equal)
    and, for small models, one intra-op thread unless OMP_NUM_THREADS says otherwise: their
    matrices are so small that threads mostly wait for each other, and on a shared machine a
    busy core stalls every step (measured: 6x slower with 2 threads on 2 busy cores)."""
    import torch

    if device_type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if recipe.hidden_size <= SMALL_HIDDEN and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(threads)


def _seed_list(seeds: int | Sequence[int], seed_offset: int) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise FmauditError(f"--seeds: must be >= 1, got {seeds}")
        if seeds > MAX_MEMBERS:
            raise FmauditError(f"--seeds {seeds}: at most {MAX_MEMBERS:,} members")
        if seed_offset < 0:
            raise FmauditError(f"--seed-offset: must be >= 0, got {seed_offset}")
        if seed_offset + seeds - 1 > MAX_SEED:
            raise FmauditError(f"--seed-offset {seed_offset}: seeds {seed_offset}.."
                               f"{seed_offset + seeds - 1} do not fit in 0..{MAX_SEED} "
                               "(2**32 - 1; choose a smaller offset)")
        return list(range(seed_offset, seed_offset + seeds))
    out = [int(s) for s in seeds]
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise FmauditError(f"seeds: need distinct non-negative integers, got {list(seeds)}")
    if max(out) > MAX_SEED or len(out) > MAX_MEMBERS:
        raise FmauditError(f"seeds: at most {MAX_MEMBERS:,} seeds, each in 0..{MAX_SEED} "
                           f"(2**32 - 1), got {len(out)} up to {max(out)}")
    return out


def _check_same_on_every_process(data: PreparedData) -> None:
    """Every process built its own tokenizer and windows; make sure they agree (a silent
    mismatch would train on token ids that mean different things on different processes)."""
    import hashlib

    from accelerate.utils import gather_object

    h = hashlib.sha256(data.tokenizer.backend_tokenizer.to_str().encode())  # vocab + merges
    h.update(str(data.window_chars).encode())
    if data.train_encoded is not None:
        h.update(data.train_encoded["input_ids"].numpy().tobytes())
    digests = gather_object([h.hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes built different tokenizers or windows: {digests}")


# -- the ensemble ---------------------------------------------------------------------------

def train_ensemble(
    corpus_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    recipe: Recipe | str = "tiny",
    seeds: int | Sequence[int] = 3,
    *,
    seed_offset: int = 0,
    vary: str | None = None,
    corpus_options: Any = None,
    mixed_precision: str = "auto",
    save_every: int | None = None,
    log_with: Sequence[str] = (),
    overwrite: bool = False,
    stop_after: int | None = None,
    tile_max_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or finish) a matched seed ensemble into ``out_dir``; return the member manifests.

    Args:
        corpus_path: FASTA or text corpus (``fmaudit.corpus.bundled("dna")`` for the demo).
        out_dir: output folder (layout in :mod:`fmaudit.training.manifest`).
        recipe: a :class:`Recipe`, a shipped recipe name or a TOML path.
        seeds: a count (seeds ``seed_offset .. seed_offset + n - 1``) or explicit seeds.
        vary: ``"data-order"`` makes each member's data seed its init seed.
        corpus_options: ``fmaudit.corpus.CorpusOptions`` (held-out split, regions...).
        mixed_precision: ``auto`` (bf16 on capable GPUs, else fp32), ``no``, ``bf16``, ``fp16``.
        save_every: checkpoint cadence in optimiser steps (default: the recipe's; 0: none).
        log_with: accelerate trackers (``tensorboard``, ``wandb``...), logging to OUT/logs.
        overwrite: replace the run found in ``out_dir`` (a different one, or the same one from
            scratch); without it a different run is refused and the same run is continued.
        stop_after: interrupt (KeyboardInterrupt) after this many optimiser steps of a member
            (testing the resume path).
        tile_max_tokens: override the tiled/sampled threshold (testing).

    Returns:
        one dict per requested seed: the manifest plus ``path`` (member folder) and ``status``
        (``trained``, ``resumed`` or ``skipped``).
    """
    from fmaudit.corpus import open_corpus

    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    if vary is not None and vary not in VARY:
        raise FmauditError(f"--vary {vary!r}: must be one of {', '.join(VARY)}")
    if save_every is not None:
        recipe = recipe.replace(source="--save-every", save_every=save_every)
    seed_list = _seed_list(seeds, seed_offset)
    if not str(out_dir).strip():  # Path("") would be the current folder
        raise FmauditError("--out: empty path (name an output folder)")
    out = Path(out_dir).expanduser().absolute()
    resolve_mixed_precision(mixed_precision)  # validate before any work
    if out.exists() and not out.is_dir():
        raise FmauditError(f"--out {out}: is a file, not a folder (choose another --out)")
    # OUT is claimed (its run file written) only once the data is known to be usable; a failed
    # start leaves no empty OUT that would make the corrected command look like another run
    with output_dir(out, "--out"):
        corpus = open_corpus(corpus_path, corpus_options)
        recipe = resolve_tokenizer(recipe, corpus.kind)
        accelerator = make_accelerator(recipe, mixed_precision, log_with, out)
        # the precision accelerate settled on (auto, a launcher's) is part of the run: members
        # of one ensemble, and the steps of one member across a resume, share it
        identity = {**mf.run_identity(recipe, corpus.summary(), vary),
                    "mixed_precision": str(accelerator.mixed_precision)}
        world = accelerator.num_processes
        if recipe.batch_size % (recipe.grad_accum * world):
            raise FmauditError(f"--batch-size {recipe.batch_size}: must be a multiple of "
                               f"grad_accum x processes ({recipe.grad_accum} x {world})")
        # refuse a different run before any work; --overwrite starts over even on the same run
        continuing = mf.check_run_identity(out, identity, overwrite, corpus) and not overwrite
        data = prepare_data(corpus, recipe, tile_max_tokens=tile_max_tokens)
        if world > 1:
            _check_same_on_every_process(data)
    with _out_of_space(out):
        if accelerator.is_main_process:
            if not continuing:
                mf.clear_run(out)
            atomic_write_json(out / mf.RUN_FILE, identity)
        accelerator.wait_for_everyone()
        results = []
        with _cpu_settings(accelerator.device.type, data.recipe):
            for seed in seed_list:
                results.append(_train_one(accelerator, data, identity, out, seed, vary,
                                          stop_after))
        if accelerator.is_main_process:
            _write_card(out, identity)
    accelerator.wait_for_everyone()
    return results


# A full disk or quota while checkpoints are written: bad input (the --out location), not a bug.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _out_of_space(out: Path) -> Iterator[None]:
    """Turn "no space left" while writing into --out (an OSError, or safetensors' own error,
    which carries only the OS message) into a one-line error naming --out. Every write there is
    atomic, so what is done stays done and a rerun resumes."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        raise FmauditError(f"--out {out}: cannot write ({exc.strerror}; free space and run "
                           "the same command again to resume)") from None
    except SafetensorError as exc:
        if not any(f"os error {code}" in str(exc) or os.strerror(code) in str(exc)
                   for code in _NO_SPACE):
            raise
        raise FmauditError(f"--out {out}: cannot write ({os.strerror(errno.ENOSPC)}; free space "
                           "and run the same command again to resume)") from None


def _train_one(accelerator: Any, data: PreparedData, identity: dict[str, Any], out: Path,
               seed: int, vary: str | None, stop_after: int | None) -> dict[str, Any]:
    from fmaudit.models.build import build_model
    from fmaudit.training.loop import train_member
    from fmaudit.training.resume import clear_training_state

    member = mf.member_dir(out, seed)
    work = mf.work_dir(out, seed)
    if accelerator.is_main_process:  # what a kill during this member's checkpoint writes left
        for stale in [*out.glob(f".seed{seed}.*.tmp"), *(out / mf.INIT).glob(f".seed{seed}.*.tmp")]:
            shutil.rmtree(stale, ignore_errors=True)
    data_seed = seed if vary == "data-order" else data.recipe.data_seed
    recipe = data.recipe.replace(data_seed=data_seed)
    if mf.is_done(out, seed):
        # a finished member is trusted only when its files are whole (a copy may be cut short)
        problem = mf.member_problem(member, seed)
        if problem:
            raise FmauditError(f"{member}: damaged member folder: {problem} (delete {member} "
                               "to retrain this member, or pass --overwrite to retrain all)")
        _ensure_init(accelerator, recipe, data.tokenizer, out, seed)
        if accelerator.is_main_process:
            clear_training_state(work)  # a kill between the final move and this cleanup leaves it
            _remove_if_empty(out / mf.WORK)
            progress.info(f"seed{seed}: already trained, skipped ({member})")
        return {**mf.read_manifest(member), "path": str(member), "status": "skipped"}

    stream = make_stream(data, data_seed)
    model = build_model(recipe, data.tokenizer, seed)
    _ensure_init(accelerator, recipe, data.tokenizer, out, seed, model)

    resumed = (work / "state" / "state.json").is_file()
    log = None
    if accelerator.log_with:
        accelerator.init_trackers(f"seed{seed}", config=recipe.to_dict())
        log = accelerator.log
    try:
        model, prog, full_state = train_member(
            accelerator, model, recipe, stream, data.eval_set, seed=seed, work_dir=work,
            save_every=recipe.save_every, desc=f"seed{seed}", log=log, stop_after=stop_after)
    finally:
        if accelerator.log_with:
            accelerator.end_training()
    runtime = {"processes": accelerator.num_processes,
               "distributed_type": str(accelerator.distributed_type.value),
               "mixed_precision": accelerator.mixed_precision,
               "device": accelerator.device.type, "grad_accum": recipe.grad_accum}
    manifest = mf.member_manifest(
        seed=seed, data_seed=data_seed, recipe=recipe, tokenizer_spec=recipe.tokenizer,
        vocab_size=len(data.tokenizer), architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()), corpus_summary=data.summary,
        window_chars=data.window_chars, stream=stream.describe(),
        heldout_windows=len(data.eval_set), progress=prog, runtime=runtime, resumed=resumed)
    if accelerator.is_main_process:
        with _quiet_saves(), atomic_dir(member) as tmp:
            model.save_pretrained(tmp, state_dict=full_state)
            _save_tokenizer(data.tokenizer, tmp)
            atomic_write_text(tmp / "recipe.toml", recipe.to_toml())
            atomic_write_json(tmp / mf.MANIFEST, manifest)  # last: marks the member complete
        clear_training_state(work)
        _remove_if_empty(out / mf.WORK)
        _write_card(out, identity)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    status = "resumed" if resumed else "trained"
    if accelerator.is_main_process:
        held = manifest["heldout_loss"]
        progress.info(f"seed{seed}: {status}, {prog.step} steps, held-out loss "
                      f"{'n/a' if held is None else f'{held:.4f}'} ({member})")
    return {**manifest, "path": str(member), "status": status}


def _ensure_init(accelerator: Any, recipe: Recipe, tokenizer: Any, out: Path, seed: int,
                 model: Any = None) -> None:
    """Write the untrained weights of member ``seed`` unless a whole copy is there. They are a
    pure function of (recipe, vocabulary, seed), so a missing or damaged copy is rewritten."""
    init = mf.init_dir(out, seed)
    if accelerator.is_main_process:
        problem = mf.checkpoint_problem(init) if init.exists() else "missing"
        if problem:
            if init.exists():
                progress.warn(f"{init}: damaged initial checkpoint ({problem}); writing it "
                              "again")
            if model is None:
                from fmaudit.models.build import build_model

                model = build_model(recipe, tokenizer, seed)
            with _quiet_saves(), atomic_dir(init) as tmp:
                model.save_pretrained(tmp)
                _save_tokenizer(tokenizer, tmp)
    accelerator.wait_for_everyone()


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save without the truncation/padding that batch encoding left switched on in the backend
    (it would otherwise be written into tokenizer.json and apply to every later call)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def _quiet_saves() -> Iterator[None]:
    """No "Writing model shards" bars from transformers in the middle of our progress output."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _write_card(out: Path, identity: dict[str, Any]) -> None:
    """Rewrite OUT/README.md from the manifests of every finished member in OUT."""
    manifests = [mf.read_manifest(p) for p in sorted(out.glob("seed*"))
                 if p.name[4:].isdigit() and (p / mf.MANIFEST).is_file()]
    if manifests:
        atomic_write_text(out / "README.md", mf.model_card(out, identity, manifests))
