"""Throughput of fmaudit's training loop against ``transformers.Trainer`` on identical work.

Same model (built from the recipe with the same seed), same precomputed global batches in the
same order, same optimiser and schedule objects (fmaudit's AdamW + warm-up/cosine, handed to the
Trainer through ``optimizers=``), same gradient clipping. Each side is timed from the end of
step ``--warmup`` to the end of step ``steps - 1`` (the first steps carry one-off setup, the last
fmaudit step a held-out evaluation), and tokens/s counts non-padding tokens. Because the two runs
do the same arithmetic, their final weights must agree up to float reassociation (fmaudit runs
the MLM head only at masked positions): ``max_abs_weight_diff`` checks that the comparison is
fair.

    python benchmarks/train_vs_trainer.py --recipe tiny --steps 20
    python benchmarks/train_vs_trainer.py --recipe bert-90m --steps 50 --json   # on a GPU

Target: ratio (fmaudit / Trainer) >= 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _synthetic_genome(folder: Path, recipe: Any) -> Path:
    """A seeded uniform-random DNA FASTA with ~3 batches' worth of train windows per step:
    throughput does not depend on the sequence, and the big recipes (seq_len 512, batch 96)
    need more windows than the bundled 200 kb hold."""
    import numpy as np

    chars = 8 * recipe.seq_len * recipe.batch_size * 8  # ~8 chars per token is ample for k <= 6
    rng = np.random.default_rng(0)
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, chars)].tobytes().decode()
    path = folder / "synthetic.fa"
    lines = [seq[i:i + 80] for i in range(0, len(seq), 80)]
    path.write_text(">synthetic\n" + "\n".join(lines) + "\n")
    return path


def _batches(recipe_name: str, corpus: str, steps: int, work: Path
             ) -> tuple[Any, Any, list[Any], Any, str]:
    from fmaudit.corpus import BUNDLED, bundled, open_corpus
    from fmaudit.errors import FmauditError
    from fmaudit.training.ensemble import make_stream, prepare_data
    from fmaudit.training.recipes import load_recipe

    recipe = load_recipe(recipe_name).replace(max_steps=steps, eval_every=steps, save_every=0)
    if corpus == "auto":  # the bundled genome when one batch fits, else synthetic DNA
        try:
            data = prepare_data(open_corpus(bundled("dna")), recipe)
            corpus = "dna"
        except FmauditError:
            data = prepare_data(open_corpus(_synthetic_genome(work, recipe)), recipe)
            corpus = "synthetic"
    else:
        path = bundled(corpus) if corpus in BUNDLED and not Path(corpus).exists() else Path(corpus)
        data = prepare_data(open_corpus(path), recipe)
    stream = make_stream(data, data.recipe.data_seed)
    return (data.recipe, data.tokenizer, [stream.global_batch(s) for s in range(steps)], data,
            corpus)


class _Replay:
    """A stream that returns precomputed global batches (what the Trainer side gets too)."""

    def __init__(self, batches: list[Any], data_seed: int) -> None:
        self.batches, self.data_seed = batches, data_seed

    def global_batch(self, step: int) -> Any:
        return self.batches[step]


def timed_seconds(times: list[float], timed: range) -> float:
    """Wall time of the steps in ``timed`` (consecutive), from ``times[i]``, the clock at the
    end of step i: from the end of the step before the first to the end of the last."""
    return times[timed[-1]] - times[timed[0] - 1]


def run_fmaudit(recipe: Any, tok: Any, batches: list[Any], data: Any) -> tuple[list[float], Any]:
    from accelerate import Accelerator

    from fmaudit.models.build import build_model
    from fmaudit.training.ensemble import resolve_mixed_precision
    from fmaudit.training.loop import train_member

    # the same precision as the Trainer side below (bf16 on a GPU that has it)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision("auto"))
    model = build_model(recipe, tok, seed=0)
    times: list[float] = []

    def log(metrics: dict[str, float], step: int) -> None:
        if accelerator.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as work:
        model, _, _ = train_member(accelerator, model, recipe, _Replay(batches, 0),
                                   data.eval_set, seed=0, work_dir=Path(work), save_every=0,
                                   log=log)
    return times, model


def run_trainer(recipe: Any, tok: Any, batches: list[Any]) -> tuple[list[float], Any]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from fmaudit.models.build import build_model
    from fmaudit.training.ensemble import resolve_mixed_precision
    from fmaudit.training.loop import build_optimizer, build_scheduler

    model = build_model(recipe, tok, seed=0)
    if torch.cuda.is_available():
        model = model.cuda()  # the optimiser below is built over the device parameters
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    times: list[float] = []
    served = iter(batches)

    def collate(_: list[Any]) -> dict[str, Any]:
        b = next(served)  # in order, whatever the sampler did with the indices
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    mp = resolve_mixed_precision("auto")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, max_steps=len(batches),
            max_grad_norm=recipe.grad_clip if recipe.grad_clip > 0 else 0.0,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            remove_unused_columns=False, dataloader_pin_memory=False, seed=0,
            use_cpu=not torch.cuda.is_available(), bf16=mp == "bf16")
        trainer = Trainer(model=model, args=args, data_collator=collate,
                          train_dataset=list(range(len(batches))),
                          optimizers=(optimizer, scheduler), callbacks=[Clock()])
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its metrics dict
            trainer.train()
    return times, trainer.model


def _training_flops(recipe: Any, tok: Any, batches: list[Any], peak_tflops: float | None
                    ) -> tuple[float, float | None, str]:
    """Model FLOPs per (non-pad) token of one training step, the peak FLOP/s and the device.

    3 x the forward (fmaudit.models.flops), the head counted at the labelled positions only:
    the useful work, the same figure for both sides (the Trainer runs its head everywhere).
    """
    import torch

    from fmaudit.models.build import build_model
    from fmaudit.models.flops import forward_flops_per_token, peak_flops
    from fmaudit.training.ensemble import resolve_mixed_precision

    model = build_model(recipe, tok, seed=0)
    head_fraction = sum(b.n_targets for b in batches) / max(1, sum(b.n_tokens for b in batches))
    flops = 3.0 * forward_flops_per_token(model, recipe.seq_len, head_fraction)
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    if peak_tflops is not None:
        peak = peak_tflops * 1e12
    else:
        bf16 = resolve_mixed_precision("auto") == "bf16"
        peak = peak_flops(name, "bfloat16" if bf16 else "float32") if cuda else None
    return flops, peak, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="Untimed first steps.")
    parser.add_argument("--corpus", default="auto",
                        help="File, bundled dna/text, or auto: the bundled genome when a batch "
                             "fits, else seeded random DNA.")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="Peak dense TFLOP/s for MFU (default: known GPUs in bf16).")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    args = parser.parse_args(argv)
    if args.steps < args.warmup + 3:
        parser.error(f"--steps must be at least --warmup + 3 ({args.warmup + 3})")

    import torch

    from fmaudit.training.ensemble import resolve_mixed_precision

    with tempfile.TemporaryDirectory() as work:
        recipe, tok, batches, data, corpus = _batches(args.recipe, args.corpus, args.steps,
                                                      Path(work))
    tokens = [b.n_tokens for b in batches]
    timed = range(args.warmup + 1, args.steps - 1)  # steps whose duration is measured
    n_tokens = sum(tokens[s] for s in timed)
    # Trainer first, then fmaudit: the second run gets no advantage from a warm allocator
    t_times, t_model = run_trainer(recipe, tok, batches)
    f_times, f_model = run_fmaudit(recipe, tok, batches, data)
    f_s, t_s = timed_seconds(f_times, timed), timed_seconds(t_times, timed)
    f_state, t_state = f_model.state_dict(), t_model.state_dict()
    diff = max(float((f_state[k].float().cpu() - t_state[k].float().cpu()).abs().max())
               for k in f_state)
    flops, peak, device_name = _training_flops(recipe, tok, batches, args.peak_tflops)
    result = {
        "recipe": recipe.name, "corpus": corpus, "steps": args.steps, "timed_steps": len(timed),
        "batch_size": recipe.batch_size, "seq_len": recipe.seq_len,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "mixed_precision": resolve_mixed_precision("auto"),
        "threads": torch.get_num_threads(), "tokens_timed": n_tokens,
        "fmaudit": {"seconds": f_s, "tokens_per_s": n_tokens / f_s},
        "trainer": {"seconds": t_s, "tokens_per_s": n_tokens / t_s},
        "ratio": (n_tokens / f_s) / (n_tokens / t_s),
        "max_abs_weight_diff": diff,
        "device_name": device_name,
        "flops_per_token": flops,
        "peak_flops": peak,
    }
    for side in ("fmaudit", "trainer"):
        result[side]["mfu"] = flops * result[side]["tokens_per_s"] / peak if peak else None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{recipe.name}: {len(timed)} timed steps of {recipe.batch_size} x "
              f"{recipe.seq_len} tokens on {result['device']}")
        print(f"  fmaudit  {result['fmaudit']['tokens_per_s']:>12,.0f} tokens/s")
        print(f"  Trainer  {result['trainer']['tokens_per_s']:>12,.0f} tokens/s")
        print(f"  ratio    {result['ratio']:.2f} (target >= 1.0); final weights differ by at "
              f"most {diff:.2e}")
        if peak:
            print(f"  MFU      fmaudit {result['fmaudit']['mfu']:.1%}, Trainer "
                  f"{result['trainer']['mfu']:.1%} of {peak / 1e12:.0f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
