"""Parameter groups for the Fisher analysis: ``embeddings``, ``layer.<i>``, ``head``, ``other``.

Names follow the architectures fmaudit supports (BERT, RoBERTa/ESM as in Nucleotide Transformer,
GPT-2, GPT-NeoX/Pythia, Llama-style). Anything unrecognised lands in ``other``, which is reported,
never dropped.
"""

from __future__ import annotations

import re
from typing import Any

EMBEDDINGS = "embeddings"
HEAD = "head"
OTHER = "other"

# Transformer blocks: bert.encoder.layer.3., gpt2 transformer.h.3., neox gpt_neox.layers.3.,
# llama model.layers.3., esm esm.encoder.layer.3.
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block)\.(\d+)\.")
_HEAD = re.compile(r"^(?:cls\.|lm_head\.|embed_out\.|output_projection\.)")
_EMBED = re.compile(r"(?:^|\.)(?:embeddings\.|wte\.|wpe\.|embed_in\.|embed_tokens\.|"
                    r"embed_positions\.|word_embeddings\.|position_embeddings\.)")


def group_of(name: str) -> str:
    """The group of a parameter name (as in ``model.named_parameters()``)."""
    if _HEAD.search(name):
        return HEAD
    block = _BLOCK.search(name)
    if block is not None:
        return f"layer.{int(block.group(1))}"
    if _EMBED.search(name):
        return EMBEDDINGS
    return OTHER


def ordered_groups(names: list[str]) -> list[str]:
    """Group names in reading order: embeddings, layer.0..n, head, other (those present)."""
    present = {group_of(n) for n in names}
    layers = sorted((g for g in present if g.startswith("layer.")), key=lambda g: int(g[6:]))
    out = [g for g in (EMBEDDINGS,) if g in present] + layers
    out += [g for g in (HEAD, OTHER) if g in present]
    return out


def tied_output_weight(model: Any) -> bool:
    """True when the output projection shares its weight tensor with the input embeddings."""
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if inp is None or out is None:
        return False
    return out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()


def untie_output_weight(model: Any) -> str | None:
    """Give the output projection its own copy of the tied matrix (in place, on a copy of the
    model you own). Returns the parameter name of the now separate output weight, or None when
    the model was not tied. The two copies start equal, so the forward pass is unchanged, but
    their gradients are now separate: d(tied) = d(input copy) + d(output copy)."""
    import torch

    if not tied_output_weight(model):
        return None
    out = model.get_output_embeddings()
    out.weight = torch.nn.Parameter(out.weight.detach().clone())
    # keep transformers from re-tying on a later call
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    for name, param in model.named_parameters():
        if param is out.weight:
            return name
    raise RuntimeError("output projection weight not found among named parameters")


def input_embedding_name(model: Any) -> str:
    inp = model.get_input_embeddings().weight
    for name, param in model.named_parameters():
        if param is inp:
            return name
    raise RuntimeError("input embedding weight not found among named parameters")
