"""Training matched seed ensembles: recipes (TOML), the data stream, the accelerate loop, resume.

Modules, in data-flow order: ``recipes`` (the frozen, validated :class:`Recipe`), ``data`` (global
batches as a pure function of the step; masks keyed by sample index; stream fingerprint),
``loop`` (loss, optimiser, schedule, one member under accelerate), ``resume`` (the explicit
state folder), ``manifest`` (member manifest, run identity, model card) and ``ensemble``
(everything a run shares, then one member per seed). The model itself is built by
:mod:`fmaudit.models.build`.

Python API (what ``fmaudit demo`` calls)::

    from fmaudit.corpus import bundled
    from fmaudit.training import train_ensemble
    manifests = train_ensemble(bundled("dna"), "runs/dna", "tiny", seeds=3)

Launching. The command is the same on one CPU and on many GPUs; accelerate reads the launcher's
environment:

* one machine, several GPUs (DDP): ``accelerate launch --multi_gpu --num_processes 8 -m fmaudit
  train --corpus hg38.fa --holdout chr8 --recipe bert-90m --seeds 5 --out runs/hg38``, or the
  same with ``torchrun --nproc_per_node 8 -m fmaudit train ...``; on CPU-only machines torchrun
  gives a gloo process group. Several nodes: ``torchrun --nnodes N --node_rank R
  --master_addr HOST ...``.
* FSDP: an accelerate config with ``distributed_type: FSDP``,
  ``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP``, ``fsdp_transformer_layer_cls_to_wrap:
  BertLayer`` (``GPT2Block`` for clm), ``fsdp_state_dict_type: FULL_STATE_DICT``,
  ``fsdp_use_orig_params: true`` (the repository's ``examples/accelerate-fsdp.yaml``), then
  ``accelerate launch --config_file examples/accelerate-fsdp.yaml -m fmaudit train ...``.
  accelerate runs FSDP on accelerators only. Final checkpoints are gathered to full weights;
  periodic resume checkpoints are off under FSDP (they hold one process's optimiser shard).
  DeepSpeed is refused.
* Mixed precision: ``--mixed-precision auto`` (default) is bf16 on a CUDA GPU that supports it,
  fp32 otherwise; a launcher's ``--mixed_precision`` wins over auto. Attention is PyTorch SDPA.
* ``--batch-size`` is the global batch: each optimiser step sees the same windows whatever the
  number of processes and ``--grad-accum`` (it must divide by processes x accumulation).
"""

from __future__ import annotations

from typing import Any

from fmaudit.training.recipes import Recipe, load_recipe, recipe_names, resolve_tokenizer

__all__ = ["Recipe", "load_recipe", "recipe_names", "resolve_tokenizer", "train_ensemble"]


def train_ensemble(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """See :func:`fmaudit.training.ensemble.train_ensemble` (imported lazily: it needs torch)."""
    from fmaudit.training.ensemble import train_ensemble as _train

    return _train(*args, **kwargs)
