"""The prediction pass: every member over the same batches, in one stream.

Per batch, each member's logits at the predicted positions feed its ``PredictionAccumulator``;
the members' logits together feed the ``DisagreementAccumulator``; mean-pooled hidden states of
the first ``contextual_windows`` windows are kept for the contextual-embedding metrics. Nothing of
size [members x positions x vocabulary] outlives a batch, so memory does not grow with the number
of evaluated windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fmaudit.errors import FmauditError
from fmaudit.metrics import DisagreementAccumulator, NonFiniteLogitsError, PredictionAccumulator
from fmaudit.passes.device import autocast, to_device
from fmaudit.passes.distributed import all_reduce_sum, gather_objects
from fmaudit.passes.eval_data import EvalBatch
from fmaudit.passes.resume import Cadence, ResumeStore, Saved, on_any_process, on_every_process


class UnusableStateError(Exception):
    """A saved state whose tensors do not fit this pass (nothing was run yet)."""


def target_logits(logits: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """``logits [B, L, V]`` at the flattened positions ``flat_index [N]`` (the row-major
    ``target_mask.flatten().nonzero()``, computed on the CPU so no device sync is needed)
    -> ``[N, V]`` float32."""
    return logits.flatten(0, 1).index_select(0, flat_index).float()


def split_head(model: Any) -> tuple[Any, Any] | None:
    """(trunk, head) when the LM is its base model plus exactly one head module (BERT ``cls``,
    RoBERTa/ESM/GPT-2/Llama ``lm_head``, GPT-NeoX ``embed_out``); None otherwise."""
    prefix = getattr(model, "base_model_prefix", "")
    trunk = getattr(model, prefix, None) if prefix else None
    if trunk is None:
        return None
    heads = [module for name, module in model.named_children() if name != prefix]
    return (trunk, heads[0]) if len(heads) == 1 else None


class MemberForward:
    """One member's forward pass that returns logits only at the predicted positions.

    The vocabulary head runs on the trunk's hidden states at those positions alone (15% of
    them for a masked LM), which is where most of a small model's head cost goes. The split is
    checked once, on the first batch, against the model's own full forward; a model whose
    forward does more than ``head(trunk(x))`` (logit scaling, soft-capping...) keeps the full
    forward. Architectures in ``VERIFIED`` skip the check (tests/passes/test_member_forward.py).
    """

    # forwards known (and tested) to be exactly head(trunk(x)); others are checked once
    VERIFIED = frozenset({"bert", "roberta", "xlm-roberta", "esm", "gpt2", "gpt_neox", "llama"})

    def __init__(self, model: Any) -> None:
        self.model = model
        self.split = split_head(model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        self.checked = self.split is None or model_type in self.VERIFIED
        # for these, no mask means every token is attended (tests/passes/test_member_forward.py)
        self.mask_optional = model_type in self.VERIFIED

    def __call__(self, batch: EvalBatch, flat_index: torch.Tensor, want_hidden: bool,
                 unpadded: bool = False) -> tuple[torch.Tensor, Any]:
        """``unpadded``: the batch has no padding (decided on the host). The verified
        architectures then get no attention mask: transformers would otherwise read the mask
        back to the host to find that out, a device synchronisation per batch and member."""
        mask = None if unpadded and self.mask_optional else batch.attention_mask
        if self.split is None:
            out = self.model(input_ids=batch.input_ids, attention_mask=mask,
                             output_hidden_states=want_hidden)
            return target_logits(out.logits, flat_index), out.hidden_states
        trunk, head = self.split
        out = trunk(input_ids=batch.input_ids, attention_mask=mask,
                    output_hidden_states=want_hidden)
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, flat_index)
        raw = head(hidden)
        logits = raw.float()
        if not self.checked:
            full = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            reference = target_logits(full.logits, flat_index)
            self.checked = True
            # half-precision autocast rounds the two paths differently
            tol = 5e-2 if raw.dtype in (torch.bfloat16, torch.float16) else 1e-4
            if not torch.allclose(logits, reference, rtol=tol, atol=tol):
                self.split = None
                return reference, (out.hidden_states if want_hidden else None)
        return logits, (out.hidden_states if want_hidden else None)


def _state(preds: Sequence[PredictionAccumulator], disagreement: DisagreementAccumulator,
           counts: torch.Tensor, label_counts: torch.Tensor, pooled: list[list[torch.Tensor]],
           pooled_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pass's whole state between two batches, as named CPU tensors."""
    state = {f"predictions.{m}": acc.sums() for m, acc in enumerate(preds)}
    state |= {"disagreement": disagreement.sums(), "counts": counts,
              "label_counts": label_counts.cpu()}
    if pooled_ids:
        state["pooled_ids"] = torch.cat(pooled_ids)
        state |= {f"pooled.{m}": torch.cat(p) for m, p in enumerate(pooled)}
    return state


def _restore(state: dict[str, torch.Tensor], preds: Sequence[PredictionAccumulator],
             disagreement: DisagreementAccumulator, counts: torch.Tensor,
             label_counts: torch.Tensor, pooled: list[list[torch.Tensor]],
             pooled_ids: list[torch.Tensor]) -> None:
    """Load :func:`_state` output into the pass's (fresh) accumulators and buffers.

    Raises:
        KeyError, ValueError, RuntimeError: names, shapes or values that do not fit.
    """
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or inf")
    if bool((state["counts"] < 0).any()) or bool((state["label_counts"] < 0).any()):
        raise ValueError("negative counts")
    for m, acc in enumerate(preds):
        acc.load_sums(state[f"predictions.{m}"])
    disagreement.load_sums(state["disagreement"])
    counts.copy_(state["counts"])
    label_counts.copy_(state["label_counts"])
    if "pooled_ids" in state:
        pooled_ids.append(state["pooled_ids"])
        for m, p in enumerate(pooled):
            p.append(state[f"pooled.{m}"])


def mean_pool(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of every layer's hidden states -> ``[B, layers, H]`` float32."""
    mask = attention_mask.unsqueeze(-1).float()  # [B, L, 1]
    denom = mask.sum(1).clamp_min(1.0)  # [B, 1]
    return torch.stack([(h.float() * mask).sum(1) / denom for h in hidden_states], dim=1)


@dataclass
class PredictionResult:
    members: list[dict]  # PredictionAccumulator.compute() per member
    disagreement: dict
    pooled: list[torch.Tensor] | None  # per member [W, layers, H], windows in id order
    window_ids: list[int] = field(default_factory=list)
    label_counts: torch.Tensor | None = None  # [V] float64: how often each token was a label
    positions: int = 0
    windows: int = 0


def run_prediction_pass(
    models: Sequence[Any],
    member_ids: Sequence[str],
    batches: Iterable[EvalBatch],
    vocab_size: int,
    top_ps: Sequence[float],
    top_p_rule: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    contextual_windows: int = 0,
    progress: Any = None,
    resume: ResumeStore | None = None,
    resume_part: str = "predictions",
    saved: Saved | None = None,
    resume_key: Any = None,
) -> PredictionResult:
    """Stream ``batches`` through every member; reduce sums over processes at the end.

    ``resume``: save this process's sums there every ``resume.every_s`` seconds and at the end
    of the stream, as ``resume_part`` (with ``resume_key``, see :meth:`ResumeStore.save`).
    ``saved``: such a state to start from; ``batches`` must then begin after the
    ``saved.progress`` batches it holds."""
    preds = [PredictionAccumulator(vocab_size) for _ in models]
    disagreement = DisagreementAccumulator(len(models), list(top_ps), top_p_rule)
    want_hidden = contextual_windows > 0
    forwards = [MemberForward(model) for model in models]
    pooled: list[list[torch.Tensor]] = [[] for _ in models]
    pooled_ids: list[torch.Tensor] = []
    counts = torch.zeros(2, dtype=torch.float64)  # windows, positions
    label_counts = torch.zeros(vocab_size, dtype=torch.float64, device=device)
    done = 0  # batches in the sums
    problem = "another process has no usable state for this pass"
    restored = False
    if saved is not None:
        try:
            _restore(saved.tensors, preds, disagreement, counts, label_counts, pooled,
                     pooled_ids)
            restored = True
        except (KeyError, ValueError, RuntimeError) as exc:  # names, shapes, values
            problem = f"{type(exc).__name__}: {exc}"
    # every process resumes, or none does: their all-reduces must pair up
    if on_any_process(saved is not None) and not on_every_process(restored):
        raise UnusableStateError(problem)
    if restored:
        done = saved.progress
        if progress is not None:
            progress.update(int(counts[0]))

    def save() -> None:
        resume.save(resume_part, done, _state(preds, disagreement, counts, label_counts,
                                              pooled, pooled_ids), part_key=resume_key)

    cadence = Cadence(resume.every_s if resume is not None else 0.0)
    with torch.inference_mode():
        for batch in batches:
            # decided on the CPU copy: no device synchronisation per batch
            keep = (batch.window_ids < contextual_windows) if want_hidden else None
            any_keep = bool(keep.any()) if keep is not None else False
            n_windows, n_labels = batch.window_ids.numel(), batch.labels.numel()
            flat_index = batch.target_mask.flatten().nonzero().squeeze(1)
            unpadded = bool(batch.attention_mask.all())
            if device.type != "cpu":
                batch, flat_index = to_device(batch, device), to_device(flat_index, device)
                keep = to_device(keep, device) if any_keep else keep
            labels = batch.labels
            member_logits = []
            for m, (forward, mid) in enumerate(zip(forwards, member_ids, strict=True)):
                with autocast(device, dtype):
                    logits, hidden_states = forward(batch, flat_index, want_hidden, unpadded)
                # a padded output layer: its entries past the tokenizer's tokens are no token
                logits = logits[:, :vocab_size]
                try:
                    preds[m].update(logits, labels)
                except NonFiniteLogitsError:
                    raise FmauditError(f"{mid}: the model produced NaN/inf logits; refusing to "
                                       "average them (check the weights and --dtype)") from None
                member_logits.append(logits)
                if any_keep:
                    pool = mean_pool(hidden_states, batch.attention_mask)[keep]
                    pooled[m].append(pool.cpu())
            disagreement.update(member_logits)
            if any_keep:
                pooled_ids.append(batch.window_ids[keep].cpu())
            counts += torch.tensor([n_windows, n_labels], dtype=torch.float64)
            # index_add_, not bincount: bincount on CUDA reads the largest label back to the
            # host (a device synchronisation per batch)
            label_counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
            done += 1
            if cadence.due():
                save()
            if progress is not None:
                progress.update(n_windows)
    if resume is not None:  # the whole stream: a later interruption does not redo it
        save()
    for acc in [*preds, disagreement]:
        acc.load_sums(all_reduce_sum(acc.sums()))
    counts = all_reduce_sum(counts)
    label_counts = all_reduce_sum(label_counts.cpu())
    if counts[1] == 0:
        raise FmauditError("the evaluation set has no predicted positions (check --samples, "
                           "--seq-len and the corpus)")
    result_pooled = None
    window_ids: list[int] = []
    if want_hidden:
        local_ids = torch.cat(pooled_ids) if pooled_ids else torch.zeros(0, dtype=torch.long)
        local = [torch.cat(p) if p else None for p in pooled]
        gathered = gather_objects((local_ids, local))
        all_ids = torch.cat([g[0] for g in gathered])
        order = torch.argsort(all_ids)
        window_ids = all_ids[order].tolist()
        result_pooled = []
        for m in range(len(models)):
            parts = [g[1][m] for g in gathered if g[1][m] is not None]
            result_pooled.append(torch.cat(parts)[order] if parts else None)
    members = []
    for acc, mid in zip(preds, member_ids, strict=True):
        try:  # on an accelerator, NaN/inf is counted on the device and surfaces here
            members.append(acc.compute())
        except NonFiniteLogitsError:
            raise FmauditError(f"{mid}: the model produced NaN/inf logits; refusing to average "
                               "them (check the weights and --dtype)") from None
    return PredictionResult(
        members=members,
        disagreement=disagreement.compute(),
        pooled=result_pooled,
        window_ids=window_ids,
        label_counts=label_counts,
        windows=int(counts[0]),
        positions=int(counts[1]),
    )
