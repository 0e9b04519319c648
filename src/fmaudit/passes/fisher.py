"""The Fisher pass: diagonal Fisher information of the prediction NLL, summed per parameter group.

Estimators
- ``per-token`` (default): F = mean over predicted tokens of (d/dθ -log p(y|x))², estimated
  without bias from one randomly chosen predicted token per window; the per-window gradients of a
  batch come from one batched backward (``autograd.grad(..., is_grads_batched=True)``).
- ``batch`` (the study's): F = Σ_batches (d/dθ mean_batch NLL)² / N_tokens. It mostly measures
  the squared *mean* gradient and shrinks as the batch grows; reported for comparison only.

Labels: ``empirical`` uses the true tokens; ``sampled`` draws y from the model's own prediction
(the true Fisher), which stays meaningful when predictions are near uniform.

Tied weights: the pass works on a copy whose output projection is untied from the input
embedding, so the two roles' gradients are squared apart (``share``: output role under ``head``);
the tied view squares their sum, the gradient the tied matrix really gets (``share_tied``: the
matrix counted once, under ``embeddings``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from fmaudit.models.groups import (
    EMBEDDINGS,
    group_of,
    input_embedding_name,
    ordered_groups,
    untie_output_weight,
)
from fmaudit.passes.device import autocast
from fmaudit.passes.distributed import all_reduce_sum
from fmaudit.passes.eval_data import EvalBatch
from fmaudit.passes.masking import window_generator

ESTIMATORS = ("per-token", "batch")
LABELS = ("empirical", "sampled")
_FISHER_SALT = 7_919


@dataclass
class FisherResult:
    groups: list[str]
    sums: dict[str, float]  # untied view: output projection under its own group (head)
    sums_tied: dict[str, float] | None  # tied view; None when the model does not tie
    tokens: int
    tied: bool


def prepare_fisher_model(model: Any) -> tuple[Any, list[str], list[torch.nn.Parameter], str | None,
                                             str]:
    """A float32 train-free copy with the output projection untied; its named parameters."""
    work = copy.deepcopy(model).float().eval()
    out_name = untie_output_weight(work)
    in_name = input_embedding_name(work)
    names, params = [], []
    for name, p in work.named_parameters():
        p.requires_grad_(True)
        names.append(name)
        params.append(p)
    return work, names, params, out_name, in_name


def pick_targets(batch: EvalBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One predicted position per window, chosen by the window's own generator.

    Returns (rows, cols, label_index) where label_index indexes ``batch.labels``.
    """
    tm = batch.target_mask.cpu()
    flat_index = torch.cumsum(tm.flatten().long(), 0).view_as(tm) - 1  # index into labels
    rows, cols, lab = [], [], []
    for r, wid in enumerate(batch.window_ids.tolist()):
        cand = tm[r].nonzero().flatten()
        if cand.numel() == 0:
            continue
        g = window_generator(seed, wid, _FISHER_SALT)
        c = cand[torch.randint(cand.numel(), (1,), generator=g)].item()
        rows.append(r)
        cols.append(c)
        lab.append(int(flat_index[r, c]))
    return torch.tensor(rows), torch.tensor(cols), torch.tensor(lab, dtype=torch.long)


def sample_labels(logits: torch.Tensor, window_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """Draw one label per row of ``logits [n, V]`` from softmax, seeded per window.

    Rows of the same window draw in turn from that window's generator, so the labels depend
    only on (seed, window, position order), not on the batch.
    """
    probs = torch.softmax(logits.detach().float().cpu(), dim=-1)
    out = torch.empty(probs.shape[0], dtype=torch.long)
    gens: dict[int, torch.Generator] = {}
    for i, w in enumerate(window_ids.tolist()):
        gen = gens.setdefault(w, window_generator(seed, w, _FISHER_SALT + 1))
        out[i] = torch.multinomial(probs[i], 1, generator=gen)[0]
    return out.to(logits.device)


def _accumulate(sq_by_param: list[torch.Tensor], names: list[str], out_name: str | None,
                in_name: str, tied_sq: torch.Tensor | None, sums: dict[str, torch.Tensor],
                sums_tied: dict[str, torch.Tensor] | None) -> None:
    for name, sq in zip(names, sq_by_param, strict=True):
        g = group_of(name)
        sums[g] = sums.get(g, 0) + sq
        if sums_tied is not None and name not in (out_name, in_name):
            sums_tied[g] = sums_tied.get(g, 0) + sq
    if sums_tied is not None and tied_sq is not None:
        sums_tied[EMBEDDINGS] = sums_tied.get(EMBEDDINGS, 0) + tied_sq


def run_fisher_pass(model: Any, batches: Iterable[EvalBatch], *, estimator: str = "per-token",
                    labels: str = "empirical", seed: int = 0, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> FisherResult:
    """Fisher group sums of one member over ``batches`` (reduced across processes)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}")
    if labels not in LABELS:
        raise ValueError(f"unknown Fisher labels {labels!r}")
    device = device or torch.device("cpu")
    work, names, params, out_name, in_name = prepare_fisher_model(model)
    work.to(device)
    tied = out_name is not None
    index = {n: i for i, n in enumerate(names)}
    sums: dict[str, torch.Tensor] = {}
    sums_tied: dict[str, torch.Tensor] | None = {} if tied else None
    tokens = torch.zeros(1, dtype=torch.float64)
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, dtype):
            logits = work(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        if estimator == "per-token":
            rows, cols, lab_idx = pick_targets(batch, seed)
            if rows.numel() == 0:
                continue
            chosen = logits[rows.to(device), cols.to(device)].float()  # [n, V]
            wids = batch.window_ids[rows.to(device)]
            y = (batch.labels[lab_idx.to(device)] if labels == "empirical"
                 else sample_labels(chosen, wids, seed))
            losses = torch.nn.functional.cross_entropy(chosen, y, reduction="none")  # [n]
            eye = torch.eye(losses.numel(), device=device, dtype=losses.dtype)
            grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True,
                                        allow_unused=True)
            sq = [torch.zeros((), dtype=torch.float64, device=device) if g is None
                  else g.double().pow(2).sum() for g in grads]
            tied_sq = None
            if tied:
                gi, go = grads[index[in_name]], grads[index[out_name]]
                tied_sq = (gi.double() + go.double()).pow(2).sum()
            n = losses.numel()
        else:
            chosen = logits[batch.target_mask].float()
            y = (batch.labels if labels == "empirical"
                 else sample_labels(chosen, _row_windows(batch), seed))
            loss = torch.nn.functional.cross_entropy(chosen, y, reduction="mean")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            sq = [torch.zeros((), dtype=torch.float64, device=device) if g is None
                  else g.double().pow(2).sum() for g in grads]
            tied_sq = None
            if tied:
                gi, go = grads[index[in_name]], grads[index[out_name]]
                tied_sq = (gi.double() + go.double()).pow(2).sum()
            n = chosen.shape[0]
        _accumulate(sq, names, out_name, in_name, tied_sq, sums, sums_tied)
        tokens += n
    groups = ordered_groups(names)
    vec = torch.stack([torch.as_tensor(sums.get(g, 0.0), dtype=torch.float64).cpu()
                       for g in groups] + [tokens[0]])
    vec = all_reduce_sum(vec)
    n_tokens = int(vec[-1])
    result = {g: float(vec[i]) / max(n_tokens, 1) for i, g in enumerate(groups)}
    result_tied = None
    if sums_tied is not None:
        tvec = torch.stack([torch.as_tensor(sums_tied.get(g, 0.0), dtype=torch.float64).cpu()
                            for g in groups])
        tvec = all_reduce_sum(tvec)
        result_tied = {g: float(tvec[i]) / max(n_tokens, 1) for i, g in enumerate(groups)}
    del work
    return FisherResult(groups=groups, sums=result, sums_tied=result_tied, tokens=n_tokens,
                        tied=tied)


def _row_windows(batch: EvalBatch) -> torch.Tensor:
    """The window id of every predicted position (row-major order of ``target_mask``)."""
    rows = batch.target_mask.nonzero()[:, 0]
    return batch.window_ids[rows]
