"""The Fisher pass: diagonal Fisher information of the prediction NLL, summed per parameter group.

Estimators
- ``per-token`` (default): F = mean over windows w of (d/dθ -log p(y_t|x_w))² at one predicted
  token t drawn uniformly per window: an unbiased estimate of the mean over windows of each
  window's per-token mean (windows with few predicted tokens weigh as much as full ones; with
  equal counts, the mean over predicted tokens). The per-window gradients of a batch come from
  one batched backward (``autograd.grad(..., is_grads_batched=True)``).
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
from fmaudit.passes.device import autocast, reduced_precision_matmuls, to_device
from fmaudit.passes.distributed import all_reduce_sum
from fmaudit.passes.eval_data import EvalBatch
from fmaudit.passes.masking import window_generator
from fmaudit.passes.predictions import MemberForward, split_head

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
                    dtype: torch.dtype | None = None, vocab_size: int | None = None
                    ) -> FisherResult:
    """Fisher group sums of one member over ``batches`` (reduced across processes).

    ``vocab_size``: the tokenizer's size when the output layer is padded beyond it; the
    prediction is the softmax over those tokens only (padding rows then get no gradient)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}")
    if labels not in LABELS:
        raise ValueError(f"unknown Fisher labels {labels!r}")
    device = device or torch.device("cpu")
    work, names, params, out_name, in_name = prepare_fisher_model(model)
    work.to(device)
    work._fmaudit_vocab = vocab_size  # read by TargetLogits (the copy is ours)
    tied = out_name is not None
    index = {n: i for i, n in enumerate(names)}
    sums: dict[str, torch.Tensor] = {}
    sums_tied: dict[str, torch.Tensor] | None = {} if tied else None
    tokens = torch.zeros(1, dtype=torch.float64)
    for batch in batches:
        if estimator == "per-token":
            # targets are picked on the host copy and only the chosen windows are sent, from
            # page-locked memory without waiting (no device-to-host read per batch)
            rows, cols, lab_idx = pick_targets(batch, seed)
            if rows.numel() == 0:
                continue
            input_ids = to_device(batch.input_ids[rows], device)
            attention_mask = to_device(batch.attention_mask[rows], device)
            cols_d, y = to_device(cols, device), to_device(batch.labels[lab_idx], device)
            if labels == "sampled":  # the model's own prediction first
                with torch.no_grad(), autocast(device, dtype):
                    logits = work(input_ids=input_ids,
                                  attention_mask=attention_mask).logits[..., :vocab_size]
                y = sample_labels(logits[torch.arange(rows.numel(), device=device), cols_d]
                                  .float(), batch.window_ids[rows], seed)
            sq, tied_sq = per_window_squared_grads(
                work, names, params, input_ids, attention_mask, cols_d, y, index.get(in_name),
                index.get(out_name) if tied else None, device, dtype)
            n = rows.numel()
        else:
            batch = to_device(batch, device)
            with autocast(device, dtype):
                logits = work(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            chosen = logits[batch.target_mask][:, :vocab_size].float()
            y = (batch.labels if labels == "empirical"
                 else sample_labels(chosen, _row_windows(batch), seed))
            loss = torch.nn.functional.cross_entropy(chosen, y, reduction="mean")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            sq = [torch.zeros((), dtype=torch.float64, device=device) if g is None
                  else _sq_sum(g) for g in grads]
            tied_sq = None
            if tied:
                gi, go = grads[index[in_name]], grads[index[out_name]]
                tied_sq = _sq_sum(gi + go)
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


class TargetLogits(torch.nn.Module):
    """The LM's logits at one position per window, ``[n, V]``: the vocabulary head runs only
    there for architectures whose forward is exactly ``head(trunk(x))``
    (``MemberForward.VERIFIED``), else the full forward is indexed."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        verified = getattr(model.config, "model_type", None) in MemberForward.VERIFIED
        self.split = split_head(model) if verified else None

    def forward(self, cols: torch.Tensor, **inputs: Any) -> torch.Tensor:
        rows = torch.arange(cols.numel(), device=cols.device)
        vocab = getattr(self.model, "_fmaudit_vocab", None)  # a padded output layer's real part
        if self.split is None:
            return self.model(**inputs).logits[rows, cols][:, :vocab]
        trunk, head = self.split
        hidden = trunk(**inputs).last_hidden_state[rows, cols]  # [n, H]
        return head(hidden)[:, :vocab]


def per_window_squared_grads(
    model: Any, names: list[str], params: list[torch.nn.Parameter], input_ids: torch.Tensor,
    attention_mask: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor, in_index: int | None,
    out_index: int | None, device: torch.device, dtype: torch.dtype | None,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Sum over windows b of (d/dθ -log p(y_b | window b at cols_b))², per parameter.

    Fast path: per-sample gradients from one backward (torch's expanded weights, which cover
    Linear, Embedding and LayerNorm layers: BERT, RoBERTa, ESM). Models with other parametrised
    ops (GPT-2's Conv1D, RMSNorm) fall back to one backward per window, the same arithmetic.
    Also returns the squared sum of the tied matrix's total per-window gradient
    (input role + output role) when ``out_index`` is given.
    """
    if getattr(model, "_fmaudit_expanded_ok", True):
        try:
            return _squared_grads_expanded(model, params, input_ids, attention_mask, cols, labels,
                                           in_index, out_index, device, dtype)
        except (RuntimeError, NotImplementedError, TypeError):
            for p in params:
                if hasattr(p, "grad_sample"):
                    del p.grad_sample
            model.zero_grad(set_to_none=True)
            model._fmaudit_expanded_ok = False  # don't retry on every batch
    return _squared_grads_loop(model, params, input_ids, attention_mask, cols, labels, in_index,
                               out_index, device, dtype)


def _squared_grads_expanded(model, params, input_ids, attention_mask, cols, labels, in_index,
                            out_index, device, dtype):
    from torch.nn.utils._per_sample_grad import call_for_per_sample_grads

    n, length = input_ids.shape
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    # absolute position / token-type embeddings default to a [1, L] buffer; per-sample
    # gradients need one row per sample (RoBERTa-style models derive them from input_ids)
    if _uses_default_positions(model):
        kwargs["position_ids"] = torch.arange(length, device=device).expand(n, length)
    if getattr(model.config, "type_vocab_size", 0):
        kwargs["token_type_ids"] = torch.zeros_like(input_ids)
    target = TargetLogits(model)
    # not autocast: expanded weights' backward multiplies a half-precision output gradient by
    # the float32 weight and fails, which used to send every GPU bf16 audit to the slow
    # one-window-at-a-time loop
    with reduced_precision_matmuls(device, dtype):
        chosen = call_for_per_sample_grads(target, batch_size=n, loss_reduction="sum")(
            cols=cols, **kwargs).float()
        torch.nn.functional.cross_entropy(chosen, labels, reduction="sum").backward()
    sq, per_sample = [], []
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            sq.append(torch.zeros((), dtype=torch.float64, device=device))
            per_sample.append(None)
            continue
        sq.append(_sq_sum(gs))
        per_sample.append(gs)
    tied_sq = None
    if out_index is not None and in_index is not None:
        tied_sq = _sq_sum(per_sample[in_index] + per_sample[out_index])
    for p in params:
        if hasattr(p, "grad_sample"):
            del p.grad_sample
        p.grad = None
    return sq, tied_sq


def _uses_default_positions(model: Any) -> bool:
    model_type = getattr(model.config, "model_type", "")
    return model_type not in ("roberta", "xlm-roberta", "camembert", "esm")


def _squared_grads_loop(model, params, input_ids, attention_mask, cols, labels, in_index,
                        out_index, device, dtype):
    sq = [torch.zeros((), dtype=torch.float64, device=device) for _ in params]
    tied_sq = torch.zeros((), dtype=torch.float64, device=device) if out_index is not None \
        else None
    target = TargetLogits(model)
    for b in range(input_ids.shape[0]):
        one = slice(b, b + 1)
        with autocast(device, dtype):
            chosen = target(input_ids=input_ids[one], attention_mask=attention_mask[one],
                            cols=cols[one])
        loss = torch.nn.functional.cross_entropy(chosen.float(), labels[one])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                sq[i] += _sq_sum(g)
        if tied_sq is not None and in_index is not None:
            tied_sq += _sq_sum(grads[in_index] + grads[out_index])
    return sq, tied_sq


def _sq_sum(g: torch.Tensor) -> torch.Tensor:
    """Σ g² of one tensor as a float64 scalar: one BLAS dot in the gradient's precision (its
    blocked accumulation keeps ~1e-6 relative accuracy; no float64 copy of a [windows x
    parameter] tensor); totals across tensors and batches are then summed in float64."""
    flat = g.reshape(-1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return torch.dot(flat, flat).double()


def _row_windows(batch: EvalBatch) -> torch.Tensor:
    """The window id of every predicted position (row-major order of ``target_mask``)."""
    rows = batch.target_mask.nonzero()[:, 0]
    return batch.window_ids[rows]
