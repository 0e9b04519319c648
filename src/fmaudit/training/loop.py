"""Training one member: loss, optimiser, schedule, evaluation and the accelerate loop.

Loss normalisation. Each optimiser step's loss is the mean cross-entropy (nats) over the loss
terms of the whole GLOBAL batch, ``L = (1/N) * sum_i CE_i`` with N counted over all processes and
accumulation micro-steps. Each process back-propagates ``S_local * P * A / N`` (S_local its sum of
CE terms, P processes, A micro-steps): accelerate divides by A and DDP averages over P, so the
gradient is exactly that of L whatever P and A are (a per-batch mean averaged again would weight
short batches more).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from fmaudit import progress as progress_ui
from fmaudit.training.data import (
    IGNORE,
    EvalSet,
    StreamFingerprint,
    TrainStream,
    count_targets,
    derive_seed,
)
from fmaudit.training.recipes import Recipe
from fmaudit.training.resume import Progress, load_state, save_state

_DROPOUT_SALT = 0xD0


class LMLoss(nn.Module):
    """Wraps a HF LM and returns the SUM of token cross-entropies (fp32 scalar).

    mlm: the vocabulary head runs only at labelled positions (``hidden[labels != -100]``), which
    gives the same loss as the full-sequence head at ~1/mask_prob of its cost.
    clm: logits at t predict labels at t+1.
    Prepared by accelerate in place of the bare model, so DDP/FSDP hooks see every call.
    """

    def __init__(self, model: nn.Module, objective: str) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        if self.objective == "mlm":
            hidden = self.model.bert(input_ids=input_ids,
                                     attention_mask=attention_mask).last_hidden_state  # [B,L,H]
            sel = labels != IGNORE  # [B, L]
            logits = self.model.cls(hidden[sel])  # [N, V]
            return nn.functional.cross_entropy(logits.float(), labels[sel], reduction="sum")
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B,L,V]
        return nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                           labels[:, 1:].flatten(), ignore_index=IGNORE,
                                           reduction="sum")


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (biases, LayerNorm weights), as in BERT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": recipe.lr, "betas": (recipe.adam_beta1, recipe.adam_beta2),
              "eps": recipe.adam_eps}
    try:  # the fused kernel (CPU and CUDA, torch >= 2.4) is several times faster
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, recipe: Recipe) -> float:
    """Multiplier of ``lr`` for optimiser step ``step`` (0-based), W warm-up and T total steps.

    warm-up: ``(step + 1) / W`` for ``step < W``; then with ``q = (step - W) / max(1, T - W)``:
    cosine ``0.5 * (1 + cos(pi * q))``, linear ``1 - q``, constant ``1``.
    """
    w, t = recipe.warmup_steps, recipe.total_steps
    if step < w:
        return (step + 1) / w
    q = min(1.0, (step - w) / max(1, t - w))
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    if recipe.schedule == "linear":
        return 1.0 - q
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    # A closure over the (frozen) recipe: LambdaLR's state_dict then holds only counters.
    def factor(step: int) -> float:
        return lr_factor(step, recipe)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(accelerator: Any, wrapped: nn.Module, evalset: EvalSet, per_process: int,
             objective: str) -> float:
    """Held-out mean cross-entropy (nats per loss term), summed over processes then divided."""
    wrapped.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for batch in evalset.batches(per_process, accelerator.process_index,
                                 accelerator.num_processes):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        sums[0] += wrapped(**batch).double()
        sums[1] += count_targets(batch["labels"], objective)
    wrapped.train()
    sums = accelerator.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")


def _stop_after() -> int | None:
    """Hidden test hook: ``FMAUDIT_STOP_AFTER=N`` interrupts (KeyboardInterrupt) after step N."""
    value = os.environ.get("FMAUDIT_STOP_AFTER")
    return int(value) if value else None


def train_member(
    accelerator: Any,
    model: nn.Module,
    recipe: Recipe,
    stream: TrainStream,
    evalset: EvalSet,
    *,
    seed: int,
    work_dir: Any,
    save_every: int,
    desc: str = "",
    log: Callable[[dict[str, float], int], None] | None = None,
    stop_after: int | None = None,
) -> tuple[nn.Module, Progress, dict[str, torch.Tensor] | None]:
    """Train ``model`` for ``recipe.total_steps`` optimiser steps, resuming from ``work_dir``.

    Returns the trained model (unwrapped, on its device), the run's :class:`Progress` and, under
    FSDP, the gathered full state dict to save (None otherwise: the model holds its weights).
    Checkpoints every ``save_every`` steps (0: none) on the main process; other processes wait.
    Raises KeyboardInterrupt after step ``stop_after`` (or ``$FMAUDIT_STOP_AFTER``): the
    simulated interruption the resume tests use.
    """
    total = recipe.total_steps
    accum, world, rank = recipe.grad_accum, accelerator.num_processes, accelerator.process_index
    per_process = recipe.batch_size // (accum * world)
    stop_after = stop_after if stop_after is not None else _stop_after()
    fp = recipe.fingerprint()

    # Model first, then the optimiser over the prepared (device-placed, possibly FSDP-sharded)
    # parameters, as accelerate asks for FSDP. The scheduler is deliberately not prepared:
    # accelerate would step it once per process.
    wrapped = accelerator.prepare(LMLoss(model, recipe.objective))
    optimizer = build_optimizer(wrapped, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    optimizer = accelerator.prepare(optimizer)

    if accelerator.distributed_type == DistributedType.FSDP and save_every:
        # Our state file holds one process's optimiser state, which is a shard under FSDP.
        if accelerator.is_main_process:
            progress_ui.warn("FSDP: periodic checkpoints are off (resuming is supported with one "
                             "process or DDP); an interrupted member restarts from step 0")
        save_every = 0
    state = load_state(work_dir, seed=seed, data_seed=stream.data_seed, recipe_fingerprint=fp)
    prog = Progress()
    if state is not None:
        prog, tensors = state
        accelerator.unwrap_model(wrapped).model.load_state_dict(tensors["model"])
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
    chain = StreamFingerprint(prog.chain)

    bar = progress_ui.bar(total=total, desc=desc, unit="step") \
        if accelerator.is_main_process else None
    if bar is not None:
        bar.update(prog.step)
    t_start = time.perf_counter() - prog.elapsed_s
    tick, tick_tokens = time.perf_counter(), 0
    batches = _Prefetcher(stream, prog.step, total, enabled=accelerator.device.type != "cpu")
    try:
        for step in range(prog.step, total):
            batch = batches.get(step)
            chain.update(batch)
            torch.manual_seed(derive_seed(seed, step, rank, _DROPOUT_SALT))  # dropout only
            scale = world * accum / max(1, batch.n_targets)
            local = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for micro in range(accum):
                inputs = {k: v.to(accelerator.device, non_blocking=True)
                          for k, v in batch.shard(micro, accum, rank, world).items()}
                with accelerator.accumulate(wrapped):
                    loss_sum = wrapped(**inputs)
                    accelerator.backward(loss_sum * scale)
                    if accelerator.sync_gradients and recipe.grad_clip > 0:
                        accelerator.clip_grad_norm_(wrapped.parameters(), recipe.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                local += loss_sum.detach().double()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: no lr step either
                scheduler.step()
            step_loss = float(accelerator.reduce(local, reduction="sum")) / max(1, batch.n_targets)
            prog.step = step + 1
            prog.chain = chain.state
            prog.tokens += batch.n_tokens
            prog.targets += batch.n_targets
            prog.train_losses.append(step_loss)
            prog.train_targets.append(batch.n_targets)
            tick_tokens += batch.n_tokens
            metrics = {"train/loss": step_loss, "lr": scheduler.get_last_lr()[0]}
            if prog.step % recipe.eval_every == 0 or prog.step == total:
                held = evaluate(accelerator, wrapped, evalset, per_process,
                                recipe.objective)
                prog.evals.append({"step": prog.step, "heldout_loss": held})
                metrics["heldout/loss"] = held
            if log is not None:
                log(metrics, prog.step)
            if bar is not None:
                now = time.perf_counter()
                bar.update(1)
                if now - tick > 0.5:
                    bar.set_postfix(loss=f"{step_loss:.3f}",
                                    tok_s=f"{tick_tokens / (now - tick):.0f}")
                    tick, tick_tokens = now, 0
            prog.elapsed_s = time.perf_counter() - t_start
            if save_every and prog.step % save_every == 0 and prog.step < total:
                _checkpoint(accelerator, wrapped, optimizer, scheduler, prog, work_dir,
                            seed=seed, data_seed=stream.data_seed, fp=fp)
            if stop_after is not None and prog.step >= stop_after and prog.step < total:
                raise KeyboardInterrupt(f"stopped after step {prog.step} (FMAUDIT_STOP_AFTER)")
    finally:
        batches.close()
        if bar is not None:
            bar.close()
    prog.elapsed_s = time.perf_counter() - t_start
    full_state = None
    if accelerator.distributed_type == DistributedType.FSDP:
        full_state = {k.removeprefix("model."): v
                      for k, v in accelerator.get_state_dict(wrapped).items()}
    return accelerator.unwrap_model(wrapped).model, prog, full_state


class _Prefetcher:
    """Builds global batch s+1 in a worker thread while the accelerator runs step s.

    Masking is CPU work (per-sample generators); on a GPU it would otherwise stall every step.
    Batches are pure functions of the step, so prefetching changes nothing in the result. Off
    on CPU, where the worker would only compete with the model for the same cores.
    """

    def __init__(self, stream: TrainStream, start: int, total: int, enabled: bool) -> None:
        self.stream, self.total = stream, total
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.pending: Future[Any] | None = None
        if self.pool is not None and start < total:
            self.pending = self.pool.submit(stream.global_batch, start)

    def get(self, step: int) -> Any:
        if self.pool is None or self.pending is None:
            return self.stream.global_batch(step)
        batch = self.pending.result()
        self.pending = self.pool.submit(self.stream.global_batch, step + 1) \
            if step + 1 < self.total else None
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _checkpoint(accelerator: Any, wrapped: nn.Module, optimizer: Any, scheduler: Any,
                prog: Progress, work_dir: Any, *, seed: int, data_seed: int, fp: str) -> None:
    """Main process writes the state; everyone waits so no process runs ahead of a checkpoint."""
    model_state = accelerator.get_state_dict(wrapped)  # collective under FSDP
    if accelerator.is_main_process:
        model_state = {k.removeprefix("model."): v for k, v in model_state.items()}
        tensors = {"model": model_state, "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict()}
        save_state(work_dir, prog, tensors, seed=seed, data_seed=data_seed,
                   recipe_fingerprint=fp)
    accelerator.wait_for_everyone()
