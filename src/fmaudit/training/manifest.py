"""What a trained ensemble records about itself: member manifests, run identity, model card.

Layout of ``OUT`` (``fmaudit report 'OUT/seed<0..4>'`` reads it directly):

* ``OUT/seed<k>/``: a Hugging Face checkpoint (safetensors, config, tokenizer) plus
  ``fmaudit.json``, the member manifest. The folder appears in one rename when the member is
  complete, so a folder with ``fmaudit.json`` is a finished member.
* ``OUT/init/seed<k>/``: the untrained initial weights of member k (the audit's null baseline).
* ``OUT/fmaudit-run.json``: the run identity (resolved recipe, corpus fingerprint, data options);
  a second ``fmaudit train`` into the same OUT must match it or pass ``--overwrite``.
* ``OUT/.work/seed<k>/state/``: resume state while a member trains (removed when it is done).
* ``OUT/README.md``: a model card listing the members.
"""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from pathlib import Path
from typing import Any

from fmaudit import __version__
from fmaudit.errors import FmauditError
from fmaudit.io import read_json_object
from fmaudit.provenance import now_utc, tool_info

MANIFEST = "fmaudit.json"
RUN_FILE = "fmaudit-run.json"
WORK = ".work"
INIT = "init"
MANIFEST_SCHEMA = 1


def member_dir(out: Path, seed: int) -> Path:
    return out / f"seed{seed}"


def init_dir(out: Path, seed: int) -> Path:
    return out / INIT / f"seed{seed}"


def work_dir(out: Path, seed: int) -> Path:
    return out / WORK / f"seed{seed}"


def is_done(out: Path, seed: int) -> bool:
    """A member is done when its folder holds the manifest (written last, moved in atomically)."""
    return (member_dir(out, seed) / MANIFEST).is_file()



# what the model card and the summary table read from every member manifest
_MEMBER_FIELDS: dict[str, tuple[type, ...]] = {
    "seed": (int,), "data_seed": (int,), "steps": (int,), "tokens": (int,),
    "wall_time_s": (int, float), "train_loss": (int, float, type(None)),
    "heldout_loss": (int, float, type(None)), "data_stream": (dict,)}


def read_manifest(path: Path) -> dict[str, Any]:
    """The member manifest of the member folder ``path``, with the fields fmaudit reads.

    Raises:
        FmauditError: missing, unreadable, not a JSON object or lacking a field.
    """
    fix = f"the member is damaged: delete {path} to retrain it"
    data = read_json_object(path / MANIFEST, "member manifest", fix)
    for key, types in _MEMBER_FIELDS.items():
        if not isinstance(data.get(key), types) or isinstance(data.get(key), bool):
            raise FmauditError(f"{path / MANIFEST}: member manifest has no valid {key!r} "
                               f"({fix})")
    return data


def member_problem(path: Path, seed: int) -> str | None:
    """Why the finished member folder ``path`` cannot be trusted, or None (cheap checks only).

    Raises:
        FmauditError: its manifest is unreadable (the message names the file).
    """
    manifest = read_manifest(path)
    if manifest["seed"] != seed:
        return f"{MANIFEST} is the manifest of seed {manifest['seed']}"
    try:
        tomllib.loads((path / "recipe.toml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "recipe.toml is missing"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"recipe.toml is unreadable ({exc})"
    return checkpoint_problem(path)


def checkpoint_problem(path: Path) -> str | None:
    """Why a saved Hugging Face checkpoint folder is incomplete, or None when it looks whole.

    Cheap: ``config.json`` and the tokenizer's JSON files must parse as objects, and every
    safetensors file must have a readable header and exactly the size that header describes
    (a truncated or partly copied file fails); no tensor is loaded.
    """
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        file = path / name
        if name == "tokenizer.json" and not file.exists():
            continue  # only fast tokenizers write it
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"{name} is unreadable ({exc})"
        if not isinstance(data, dict):
            return f"{name} is not a JSON object"
    files = ["model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.exists():  # a sharded checkpoint: check every shard it lists
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                               .values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is unreadable"
    for name in files:
        problem = safetensors_problem(path / name)
        if problem:
            return f"{name} {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header + exactly the bytes it lists)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > size - 8:
                return f"is truncated ({size:,} bytes, shorter than its header)"
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"is unreadable ({exc.strerror or exc})"
    except (UnicodeDecodeError, ValueError):
        return "has a corrupt header"
    try:
        ends = [int(info["data_offsets"][1]) for key, info in header.items()
                if key != "__metadata__"]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "has a corrupt header"
    expected = 8 + n + max(ends, default=0)
    if not ends or expected != size:
        return f"is truncated or damaged ({size:,} bytes, its header describes {expected:,})"
    return None


def versions() -> dict[str, str | None]:
    """Versions of the software that trained the member (shared provenance helper)."""
    info = tool_info()
    return {"fmaudit": info["version"], "git": info["git"], "torch": info["torch"],
            "transformers": info["transformers"], "accelerate": info["accelerate"],
            "python": info["python"]}


# -- run identity ---------------------------------------------------------------------------

def run_identity(recipe: Any, corpus_summary: dict[str, Any], vary: str | None) -> dict[str, Any]:
    """What makes two ``fmaudit train`` invocations the same run (seeds aside)."""
    return {"recipe_fingerprint": recipe.fingerprint(), "recipe": recipe.to_dict(),
            "corpus_fingerprint": corpus_summary["fingerprint"],
            "corpus": {k: corpus_summary.get(k) for k in ("path", "name", "kind", "holdout",
                                                         "regions", "file_sha256", "options")},
            "vary": vary}


def check_run_identity(out: Path, identity: dict[str, Any], overwrite: bool,
                       corpus: Any = None) -> bool:
    """True when OUT holds a run (same identity) to continue; refuse a different one.

    ``corpus`` (the run's corpus): lets a run file written before holdouts had one spelling
    ("0.10", fingerprinted as written) match the same holdout spelled canonically.

    Raises:
        FmauditError: OUT holds a different run's members and ``overwrite`` is False.
    """
    path = out / RUN_FILE
    existing_members = sorted(p.name for p in out.glob("seed*") if (p / MANIFEST).exists())
    if not path.is_file():
        if existing_members and not overwrite:
            raise FmauditError(f"{out}: holds members ({', '.join(existing_members)}) from a run "
                               f"without {RUN_FILE} (pass --overwrite to replace them, or choose "
                               "another --out)")
        # names a run writes (README.md, seed<k>/, init/): in a folder that is not a run they
        # are the user's, and training would replace them
        ours = sorted(p.name for p in out.iterdir()
                      if p.name in ("README.md", "init", ".work") or p.name.startswith("seed")
                      ) if out.is_dir() else []
        if ours and not overwrite:
            raise FmauditError(f"{out}: not an fmaudit run (no {RUN_FILE}) but holds "
                               f"{', '.join(ours)}, which training would replace (choose another "
                               "--out, or pass --overwrite to replace them)")
        return False
    try:
        old = read_json_object(path, "run file", "pass --overwrite to start the run again, or "
                               "choose another --out")
    except FmauditError:
        if overwrite:  # replacing the run anyway: what the damaged file said does not matter
            return False
        raise
    if corpus is not None and old.get("corpus_fingerprint") != identity["corpus_fingerprint"]:
        written = (old.get("corpus") or {}).get("holdout")
        if isinstance(written, str) and _same_holdout(written, corpus.options.holdout) and \
                corpus.fingerprint(holdout_as_written=written) == old.get("corpus_fingerprint"):
            old = {**old, "corpus_fingerprint": identity["corpus_fingerprint"]}
    if "mixed_precision" not in old:  # a run file older than the key: the members say it
        recorded = _recorded_precisions(out)
        if len(recorded) == 1:
            old = {**old, "mixed_precision": recorded.pop()}
    same = all(old.get(k) == identity[k]
               for k in ("recipe_fingerprint", "corpus_fingerprint", "vary"))
    # members trained at one precision (unknown when neither run file nor members record it)
    same = same and old.get("mixed_precision", identity.get("mixed_precision")) == \
        identity.get("mixed_precision")
    if same:
        return True
    if not overwrite:
        diffs = _differences(old, identity)
        raise FmauditError(f"{out}: holds a different run ({diffs}) (pass --overwrite to "
                           "replace it, or choose another --out)")
    return False


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    old_recipe, new_recipe = old.get("recipe") or {}, new["recipe"]
    for key in sorted(new_recipe):
        if key in ("name", "save_every"):
            continue
        if old_recipe.get(key) != new_recipe[key]:
            parts.append(f"{key} {old_recipe.get(key)!r} -> {new_recipe[key]!r}")
    if old.get("corpus_fingerprint") != new["corpus_fingerprint"]:
        parts += _corpus_differences(old.get("corpus") or {}, new["corpus"])
    if old.get("mixed_precision", new.get("mixed_precision")) != new.get("mixed_precision"):
        parts.append(f"mixed precision {old.get('mixed_precision')!r} -> "
                     f"{new.get('mixed_precision')!r}")
    if old.get("vary") != new["vary"]:
        parts.append(f"vary {old.get('vary')!r} -> {new['vary']!r}")
    return "; ".join(parts[:4]) + ("; ..." if len(parts) > 4 else "") if parts else "unreadable"


def _recorded_precisions(out: Path) -> set[str]:
    """The mixed precisions the finished members' manifests record (unreadable ones skipped:
    they are reported when their member is reached)."""
    found = set()
    for folder in out.glob("seed*"):
        try:
            runtime = read_manifest(folder).get("runtime") or {}
        except FmauditError:
            continue
        if runtime.get("mixed_precision") is not None:
            found.add(str(runtime["mixed_precision"]))
    return found


def _same_holdout(written: str, canonical: str) -> bool:
    from fmaudit.corpus.options import canonical_holdout

    try:
        return canonical_holdout(written) == canonical
    except FmauditError:  # a damaged run file
        return False


def _corpus_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two runs' corpora with different fingerprints, by name."""
    named = [f"corpus {key} {old.get(key)!r} -> {new.get(key)!r}"
             for key in ("path", "holdout", "regions") if old.get(key) != new.get(key)]
    old_options, new_options = old.get("options"), new.get("options") or {}
    if isinstance(old_options, dict):  # run files since the options were recorded
        named += [f"corpus option {key} {old_options.get(key)!r} -> {new_options.get(key)!r}"
                  for key in sorted(new_options)
                  if key not in ("holdout", "regions", "fai_dir")
                  and old_options.get(key) != new_options.get(key)]
    if old.get("file_sha256") not in (None, new.get("file_sha256")):
        named.append("corpus file content (its sha256 changed)")
    if not named:
        named.append("corpus content or cleaning options")
    return named


def clear_run(out: Path) -> None:
    """Remove what ``fmaudit train`` wrote in OUT (and nothing else): for ``--overwrite``."""
    for p in out.glob("seed*"):
        if p.is_dir() and p.name[4:].isdigit():
            shutil.rmtree(p)
    for name in (INIT, WORK, "logs"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in (RUN_FILE, "README.md"):
        if (out / name).is_file():
            (out / name).unlink()


# -- member manifest ------------------------------------------------------------------------

def final_train_loss(losses: list[float], targets: list[int], window: int) -> tuple[float, int]:
    """Token-weighted mean train loss over the last ``window`` optimiser steps.

    ``sum_s loss_s * n_s / sum_s n_s`` over those steps (``n_s`` loss terms at step s), i.e. the
    per-token mean over every loss term of those steps. Returns (loss, steps used).
    """
    k = max(1, min(window, len(losses)))
    num = sum(loss * n for loss, n in zip(losses[-k:], targets[-k:], strict=True))
    den = sum(targets[-k:])
    return (num / den if den else float("nan")), k


def member_manifest(*, seed: int, data_seed: int, recipe: Any, tokenizer_spec: str,
                    vocab_size: int, architecture: str, parameters: int,
                    corpus_summary: dict[str, Any], window_chars: int, stream: dict[str, Any],
                    heldout_windows: int, progress: Any, runtime: dict[str, Any],
                    resumed: bool) -> dict[str, Any]:
    """The member manifest (``OUT/seed<k>/fmaudit.json``); every number is a number or null."""
    window = min(recipe.eval_every, len(progress.train_losses))
    train_loss, used = final_train_loss(progress.train_losses, progress.train_targets, window)
    heldout = progress.evals[-1]["heldout_loss"] if progress.evals else None
    return _finite_or_null({
        "schema_version": MANIFEST_SCHEMA,
        "kind": "fmaudit-member",
        "seed": seed,
        "init_seed": seed,
        "data_seed": data_seed,
        "objective": recipe.objective,
        "architecture": architecture,
        "parameters": parameters,
        "tokenizer": {"spec": tokenizer_spec, "vocab_size": vocab_size},
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe.fingerprint(),
        "corpus": corpus_summary,
        "heldout": {"split": "holdout", "windows": heldout_windows, "window_chars": window_chars,
                    "seq_len": recipe.seq_len, "mask_seed": 0, "mask_prob": recipe.mask_prob,
                    "loss": ("mean cross-entropy (nats) at the masked positions, all [MASK]"
                             if recipe.objective == "mlm" else
                             "mean next-token cross-entropy (nats)")},
        "data_stream": {"fingerprint": "sha256:" + progress.chain if progress.chain else None,
                        "rule": "h_s = sha256(h_{s-1} || input ids, attention, labels of "
                                "global batch s); h_0 = sha256('fmaudit data stream v1')",
                        "global_batch": recipe.batch_size, "window_chars": window_chars,
                        "masking": "per-sample generators keyed by (data seed, sample index)",
                        **stream},
        "steps": progress.step,
        "tokens": progress.tokens,
        "loss_terms": progress.targets,
        "train_loss": train_loss,
        "train_loss_steps": used,
        "heldout_loss": heldout,
        "heldout_history": progress.evals,
        "uniform_loss": _log(vocab_size),
        "wall_time_s": round(progress.elapsed_s, 3),
        "resumed": resumed,
        "runtime": runtime,
        "init": f"../{INIT}/seed{seed}",
        "versions": versions(),
        "created": now_utc(),
    })


def _finite_or_null(obj: Any) -> Any:
    """NaN/inf (a diverged run) become null: manifests hold numbers or null, never NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_null(v) for v in obj]
    return obj


def _log(x: int) -> float:
    return math.log(x)


# -- model card -----------------------------------------------------------------------------

def model_card(out: Path, identity: dict[str, Any], manifests: list[dict[str, Any]]) -> str:
    """``OUT/README.md``: what was trained, the members, how to load and audit them."""
    recipe = identity["recipe"]
    corpus = identity["corpus"]
    fps = {m["data_stream"]["fingerprint"] for m in manifests}
    seeds = sorted(m["seed"] for m in manifests)
    rows = ["| member | seed | data seed | steps | tokens | train loss | held-out loss | "
            "time (s) |", "|---|---|---|---|---|---|---|---|"]
    for m in sorted(manifests, key=lambda m: m["seed"]):
        rows.append(f"| [seed{m['seed']}](seed{m['seed']}/) | {m['seed']} | {m['data_seed']} | "
                    f"{m['steps']} | {m['tokens']:,} | {_fmt(m['train_loss'])} | "
                    f"{_fmt(m['heldout_loss'])} | {m['wall_time_s']:.1f} |")
    auto = "AutoModelForMaskedLM" if recipe["objective"] == "mlm" else "AutoModelForCausalLM"
    matched = ("all members saw the same data stream (fingerprint "
               f"`{next(iter(fps))}`)" if len(fps) == 1 else
               f"members saw {len(fps)} different data streams (--vary {identity['vary']})")
    span = f"seed<{seeds[0]}..{seeds[-1]}>" if seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else "seed<k>"
    return "\n".join([
        f"# fmaudit ensemble: {recipe['name']} on {corpus['name']}",
        "",
        f"{len(manifests)} {'BERT masked' if recipe['objective'] == 'mlm' else 'GPT-2 causal'}"
        f" language models that differ only in their initialisation seed, trained by "
        f"`fmaudit train` {__version__}; {matched}.",
        "",
        f"- corpus: `{corpus['path']}` ({corpus['kind']}, fingerprint "
        f"`{identity['corpus_fingerprint']}`), held-out split `{corpus['holdout']}` never "
        "trained on",
        f"- tokenizer `{recipe['tokenizer']}`, {recipe['seq_len']} tokens per window, "
        f"{recipe['hidden_size']} hidden / {recipe['num_layers']} layers / "
        f"{recipe['num_heads']} heads / {recipe['intermediate_size']} intermediate",
        f"- AdamW lr {recipe['lr']:g}, {recipe['schedule']} schedule with "
        f"{recipe['warmup_fraction']:.0%} warm-up, global batch {recipe['batch_size']}, "
        f"gradient clipping {recipe['grad_clip']:g}"
        + (f", {recipe['mask_prob']:.0%} masking" if recipe["objective"] == "mlm" else ""),
        "",
        *rows,
        "",
        "Losses are mean cross-entropies in nats per predicted token; `init/seed<k>/` holds each "
        "member's untrained weights, and `seed<k>/fmaudit.json` its full manifest.",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        f'model = {auto}.from_pretrained("{out.name}/seed{seeds[0]}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{out.name}/seed{seeds[0]}")',
        "```",
        "",
        f"Audit: `fmaudit report '{out.name}/{span}'`",
        "",
    ])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
