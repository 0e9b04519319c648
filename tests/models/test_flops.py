"""Model FLOPs per token against PyTorch's own FLOP counter on real forward/backward passes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fmaudit.models.flops import forward_flops_per_token, linear_weights, peak_flops


def _model(kind: str):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if kind == "bert":  # eager attention: its matmuls are plain bmm the counter sees
        cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3,
                         num_attention_heads=4, intermediate_size=48,
                         max_position_embeddings=64, attn_implementation="eager")
        return BertForMaskedLM(cfg)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     attn_implementation="eager")
    return GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_forward_and_training_flops_match_the_counter(kind: str) -> None:
    model = _model(kind)
    batch, seq = 3, 20
    ids = torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as fwd:
        logits = model(input_ids=ids).logits
    assert fwd.get_total_flops() == forward_flops_per_token(model, seq) * batch * seq
    with FlopCounterMode(display=False) as step:
        model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
    assert step.get_total_flops() == pytest.approx(3 * fwd.get_total_flops(), rel=0.02)
    assert logits.shape == (batch, seq, 50)


def test_head_fraction_counts_only_the_predicted_positions() -> None:
    model = _model("bert")
    body, head = linear_weights(model)
    # per block Q, K, V, output (d x d) and the feed-forward pair (d x 4d'); the head: the
    # transform (d x d) and the decoder (d x V)
    assert body == 3 * (4 * 32 * 32 + 2 * 32 * 48)
    assert head == 32 * 32 + 32 * 50
    full, none = forward_flops_per_token(model, 20), forward_flops_per_token(model, 20, 0.0)
    assert full - none == 2 * head
    assert forward_flops_per_token(model, 20, 0.15) == pytest.approx(none + 0.15 * 2 * head)
    with pytest.raises(ValueError):
        forward_flops_per_token(model, 20, 1.5)


def test_peak_flops_by_device_name() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32") is None
    assert peak_flops("Some CPU") is None
