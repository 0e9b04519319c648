"""Embedding analyses: static token embeddings (weights) and contextual ones (pooled states).

Static: every member's input-embedding matrix on the rows all members can be compared on
(special tokens and all-zero rows dropped), each pair compared, calibrated by row-permuted
partners (``null``, one per member), the analytic chance level and, where init checkpoints
exist, the same metrics between the untrained initialisations (``init``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fmaudit.errors import FmauditError
from fmaudit.metrics import (
    EmbeddingGeometry,
    anisotropy,
    compare_members,
    effective_rank,
    linear_cka,
    mean_std_members,
    mean_std_pairs,
    pair_indices,
    summarize_static,
    topk_overlap,
    usable_rows,
    valid_ks,
)
from fmaudit.models.groups import input_embedding_name
from fmaudit.models.load import init_dir_of
from fmaudit.progress import warn

CONTEXT_K = 10


def input_embeddings(model: Any) -> torch.Tensor:
    return model.get_input_embeddings().weight.detach().float().cpu()


def init_embeddings(init_dir: str | None, model: Any) -> torch.Tensor | None:
    """The input-embedding matrix of the untrained checkpoint folder of ``model``, or None.

    Read straight from the folder's safetensors file(s) under the trained model's parameter
    name (one tensor, not a whole model: ~0.5 GB saved per bert-90m member); a folder that
    names it differently is loaded as a model.
    """
    if not init_dir or not Path(init_dir).is_dir():
        return None
    try:
        return _read_init_embeddings(Path(init_dir), model)
    except Exception as exc:  # an optional comparison: a damaged init folder only drops it
        warn(f"{init_dir}: the untrained checkpoint cannot be read ({type(exc).__name__}: "
             f"{str(exc).splitlines()[0] if str(exc) else ''}); the init comparison is left out")
        return None


def _read_init_embeddings(init_dir: Path, model: Any) -> torch.Tensor | None:
    from safetensors import safe_open

    name = input_embedding_name(model)
    for file in sorted(init_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if name in f.keys():  # noqa: SIM118 (safe_open has keys(), no __contains__)
                return f.get_tensor(name).detach().float()
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    for auto in (AutoModelForMaskedLM, AutoModelForCausalLM):
        try:
            init_model = auto.from_pretrained(init_dir, use_safetensors=True)
        except (ValueError, OSError):
            continue
        return input_embeddings(init_model)
    return None


def static_section(members: list[Any], tokenizer: Any, ks: tuple[int, ...], seed: int) -> dict:
    """The report's ``static_embeddings`` block for one ensemble."""
    # the tokenizer's rows: a padded embedding matrix's extra rows are no token
    mats = [input_embeddings(m.model)[: len(tokenizer)] for m in members]
    inits = [init_embeddings(init_dir_of(m.resolved), m.model) for m in members]
    inits = [None if e is None else e[: len(tokenizer)] for e in inits]
    have_init = all(e is not None and e.shape == mats[0].shape for e in inits) and len(inits) > 1
    rows = usable_rows(mats + ([e for e in inits if e is not None] if have_init else []),
                       tokenizer.all_special_ids)
    n = int(rows.numel())
    ks_ok = valid_ks(ks, n)
    if n < 3:
        return {"rows": n, "topk_overlap": [], "local_spearman": []}
    for m, e in zip(members, mats, strict=True):
        used = e[rows]
        if bool((used == used[0]).all()):  # Procrustes and CKA have no shape to compare
            raise FmauditError(f"{m.resolved.id}: all its {n} token embeddings are identical (a "
                               "broken or constant checkpoint); the static-embedding metrics "
                               "are undefined (leave them out with --analyses "
                               "predictions,fisher)")
    gen = torch.Generator().manual_seed(seed)
    pairs, null = compare_members([EmbeddingGeometry(e[rows]) for e in mats], ks_ok,
                                  null_generator=gen)
    init: list[dict] = []
    if have_init:  # the members' geometries are freed by now (~230 MB each at n = 4101)
        init, _ = compare_members([EmbeddingGeometry(e[rows]) for e in inits], ks_ok)
    return summarize_static(pairs, ks_ok, n, null=null, init=init)


def _defined(metric: Any, *args: Any) -> float | None:
    """A metric that is undefined on these states (e.g. every window pooled to the same vector,
    as when --mask-prob 1 masks every token) is null in the report, not an error."""
    try:
        return metric(*args)
    except ValueError:
        return None


def contextual_section(pooled: list[torch.Tensor | None]) -> dict:
    """Per layer, over member pairs: linear CKA and 10-NN overlap of the windows' mean-pooled
    states; per member: anisotropy and effective rank of the last layer."""
    mats = [p for p in pooled if p is not None]
    if len(mats) != len(pooled) or not mats:
        return {"layers": [], "windows": 0}
    windows, n_layers, _ = mats[0].shape
    layers = []
    for layer in range(n_layers):
        ckas, overlaps = [], []
        for i, j in pair_indices(len(mats)):
            x, y = mats[i][:, layer].double(), mats[j][:, layer].double()
            ckas.append(_defined(linear_cka, x, y) if windows >= 2 else None)
            overlaps.append(_defined(topk_overlap, x, y, CONTEXT_K)
                            if windows > CONTEXT_K + 1 else None)
        layers.append({"layer": layer, "linear_cka": mean_std_pairs(ckas),
                       "knn_overlap": mean_std_pairs(overlaps)})
    last = [m[:, -1].double() for m in mats]
    return {
        "windows": windows,
        "k": CONTEXT_K,
        "layers": layers,
        "anisotropy": mean_std_members([_defined(anisotropy, h) for h in last]),
        "effective_rank": mean_std_members([_defined(effective_rank, h) for h in last]),
    }
