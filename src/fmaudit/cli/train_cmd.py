"""``fmaudit train``: a matched seed ensemble (only the initialisation seed differs).

Runs unchanged on one CPU, under ``accelerate launch`` or ``torchrun`` (DDP; FSDP through an
accelerate config file). Only the first process prints the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fmaudit.errors import FmauditError

# CLI flag -> recipe field (flags left unset keep the recipe's value)
OVERRIDES = ("max_steps", "max_tokens", "batch_size", "grad_accum", "lr", "tokenizer", "seq_len",
             "objective", "mask_prob", "eval_every", "eval_windows", "data_seed")


def _corpus_path(value: str | None) -> Path:
    from fmaudit.corpus import BUNDLED, bundled

    if value is None:  # the summary and manifests name the corpus actually used
        return bundled("dna")
    path = Path(value).expanduser()
    if not path.exists() and value in BUNDLED:
        return bundled(value)
    return path


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--corpus", default=None, metavar="FILE",
              help="FASTA or text corpus, or a bundled one: dna, text, lambda [default: dna].")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Output folder: OUT/seed<k>/ (HF checkpoints), OUT/init/seed<k>/, README.md.")
@click.option("--recipe", default="tiny", show_default=True, metavar="NAME|FILE",
              help="tiny, bert-4m, bert-20m, bert-90m, or a recipe .toml file.")
@click.option("--seeds", default=3, show_default=True, help="Members: seeds OFFSET..OFFSET+N-1.")
@click.option("--seed-offset", default=0, show_default=True, help="First seed.")
@click.option("--vary", type=click.Choice(["data-order"]), default=None,
              help="Also vary the data order and masks with the seed (default: matched).")
@click.option("--regions", multiple=True, metavar="REGION",
              help="FASTA contig or region (chr8:1,000,000-2,000,000). Repeat for several.")
@click.option("--holdout", default="0.1", show_default=True,
              help="Held-out fraction or contig names (chr8,chr9; a whole number such as 8 "
                   "is a contig name); never trained on.")
@click.option("--index-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Writable folder for FASTA indexes when the FASTA's folder is not.")
@click.option("--max-steps", type=int, default=None, help="Optimiser steps (overrides the "
              "recipe's token budget).")
@click.option("--max-tokens", type=int, default=None, help="Token budget (when max_steps is 0).")
@click.option("--batch-size", type=int, default=None, help="Global batch (windows per step).")
@click.option("--grad-accum", type=int, default=None, help="Gradient accumulation micro-steps.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--tokenizer", default=None, metavar="SPEC",
              help="kmer:K, bpe:SIZE or char [recipe: auto = kmer:6 DNA, bpe:4101 text].")
@click.option("--seq-len", type=int, default=None, help="Tokens per window, specials included.")
@click.option("--objective", type=click.Choice(["mlm", "clm"]), default=None,
              help="Masked (BERT) or causal (GPT-2) language modelling.")
@click.option("--mask-prob", type=float, default=None, help="Masked share of tokens (mlm).")
@click.option("--eval-every", type=int, default=None, help="Held-out evaluation cadence (steps).")
@click.option("--eval-windows", type=int, default=None, help="Held-out windows evaluated.")
@click.option("--data-seed", type=int, default=None, help="Seed of the data order and masks.")
@click.option("--save-every", type=int, default=None,
              help="Checkpoint cadence for resuming (steps; 0: none) [recipe].")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]),
              default="auto", show_default=True, help="auto: bf16 on a capable GPU, else fp32.")
@click.option("--log-with", multiple=True, metavar="TRACKER",
              help="accelerate tracker (tensorboard, wandb, ...), logging to OUT/logs. Repeat.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run found in OUT and retrain every member (without it, a "
                   "different run is refused and the same one continued).")
@click.option("--json", "as_json", is_flag=True, help="Print the member manifests as JSON.")
@click.option("--stop-after", type=int, default=None, hidden=True,
              help="Testing: interrupt after this many optimiser steps of a member.")
def train(corpus: str | None, out_dir: str, recipe: str, seeds: int, seed_offset: int,
          vary: str | None, regions: tuple[str, ...], holdout: str, index_dir: Path | None,
          save_every: int | None, mixed_precision: str, log_with: tuple[str, ...],
          overwrite: bool, as_json: bool, stop_after: int | None, **overrides: Any) -> None:
    """Train a matched seed ensemble: same windows, order and masks; only the init differs.

    \b
    fmaudit train --out runs/dna                       # tiny recipe, bundled DNA, seeds 0..2
    fmaudit train --corpus hg38.fa --holdout chr8 --recipe bert-90m --seeds 5 --out runs/hg38
    accelerate launch -m fmaudit train ...             # or: torchrun --nproc_per_node 8 -m ...

    Re-running the same command resumes an interrupted run and skips finished members.
    """
    from fmaudit.corpus import CorpusOptions
    from fmaudit.training.recipes import load_recipe

    if not out_dir.strip():  # kept a string: click turns "" into Path("."), the current folder
        raise FmauditError("--out: empty path (name an output folder)")
    if seeds < 1:
        raise FmauditError(f"--seeds {seeds}: must be at least 1")
    if seed_offset < 0:
        raise FmauditError(f"--seed-offset {seed_offset}: must be >= 0")
    changes = {k: v for k, v in overrides.items() if k in OVERRIDES and v is not None}
    if "max_steps" in changes and changes["max_steps"] < 1:
        raise FmauditError(f"--max-steps {changes['max_steps']}: must be at least 1")
    if "max_tokens" in changes and "max_steps" not in changes:
        changes["max_steps"] = 0  # an explicit token budget replaces the recipe's step count
    resolved = load_recipe(recipe, changes)  # the flags apply before the recipe is checked
    options = CorpusOptions(regions=regions, holdout=holdout,
                            fai_dir=str(index_dir) if index_dir else None)

    from fmaudit.training.ensemble import train_ensemble

    results = train_ensemble(_corpus_path(corpus), out_dir, resolved, seeds,
                             seed_offset=seed_offset, vary=vary, corpus_options=options,
                             mixed_precision=mixed_precision, save_every=save_every,
                             log_with=log_with, overwrite=overwrite, stop_after=stop_after)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    if as_json:
        from fmaudit.cli.output import print_json

        print_json({"out": str(Path(out_dir).expanduser().absolute()), "members": results})
    else:
        print_summary(results)


def summary_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [[f"seed{m['seed']}", m["status"], m["steps"], m["tokens"], m["train_loss"],
             m["heldout_loss"], m["wall_time_s"], m["path"]] for m in results]


def print_summary(results: list[dict[str, Any]]) -> None:
    """The members as a table on stdout, with the data-stream match on the last line."""
    from fmaudit.cli.output import print_table

    headers = ["member", "status", "steps", "tokens", "train loss", "held-out loss", "time (s)",
               "path"]
    print_table(summary_rows(results), headers, floatfmt=".4f")
    fps = {m["data_stream"]["fingerprint"] for m in results}
    click.echo(f"data stream: {'matched' if len(fps) == 1 else f'{len(fps)} different'} "
               f"({', '.join(sorted(f[:19] for f in fps if f))}); losses in nats per token")
