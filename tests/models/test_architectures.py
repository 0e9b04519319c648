"""Parameter grouping, tie detection, embedding lookup and the Fisher pass on each supported
architecture family, built as tiny random configs."""

import pytest
import torch

from fmaudit.models.groups import group_of, ordered_groups, tied_output_weight
from fmaudit.passes.eval_data import make_batch
from fmaudit.passes.fisher import (
    _squared_grads_expanded,
    _squared_grads_loop,
    prepare_fisher_model,
    run_fisher_pass,
)

V, L = 30, 10


def build(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": V, "hidden_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 32}
    if arch == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(max_position_embeddings=L, **common)), "mlm"
    if arch == "roberta":
        cfg = tf.RobertaConfig(max_position_embeddings=L + 2, pad_token_id=1, **common)
        return tf.RobertaForMaskedLM(cfg), "mlm"
    if arch == "esm":
        cfg = tf.EsmConfig(max_position_embeddings=L + 2, pad_token_id=1, mask_token_id=4,
                           position_embedding_type="rotary", **common)
        return tf.EsmForMaskedLM(cfg), "mlm"
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=L,
                            bos_token_id=2, eos_token_id=3)
        return tf.GPT2LMHeadModel(cfg), "clm"
    if arch == "neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**common)), "clm"
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **common)), "clm"
    raise ValueError(arch)


ARCHS = ["bert", "roberta", "esm", "gpt2", "neox", "llama"]


def batch(objective):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (4, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "special_tokens_mask": special}
    return make_batch(enc, torch.arange(4), objective, seed=0, mask_prob=0.3, mask_token_id=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_cover_every_parameter(arch):
    model, _ = build(arch)
    names = [n for n, _ in model.named_parameters()]
    groups = ordered_groups(names)
    assert groups[0] == "embeddings"
    assert [g for g in groups if g.startswith("layer.")] == ["layer.0", "layer.1"]
    # every parameter lands in exactly one listed group: nothing is dropped
    assert {group_of(n) for n in names} == set(groups)
    assert model.get_input_embeddings().weight.shape[0] == V


@pytest.mark.parametrize("arch", ARCHS)
def test_fisher_shares_on_each_architecture(arch):
    model, objective = build(arch)
    result = run_fisher_pass(model.eval(), [batch(objective)], seed=0)
    assert result.tokens == 4
    assert result.tied == tied_output_weight(model)
    total = sum(result.sums.values())
    assert total > 0 and all(v >= 0 for v in result.sums.values())


def test_expanded_weight_path_equals_loop_on_bert():
    model, objective = build("bert")
    work, names, params, out_name, in_name = prepare_fisher_model(model.eval())
    index = {n: i for i, n in enumerate(names)}
    b = batch(objective)
    cols = b.target_mask.float().argmax(1)
    y = b.input_ids.gather(1, cols[:, None])[:, 0]
    fast, fast_tied = _squared_grads_expanded(work, params, b.input_ids, b.attention_mask, cols,
                                              y, index[in_name], index[out_name],
                                              torch.device("cpu"), None)
    slow, slow_tied = _squared_grads_loop(work, params, b.input_ids, b.attention_mask, cols, y,
                                          index[in_name], index[out_name], torch.device("cpu"),
                                          None)
    for f, s in zip(fast, slow, strict=True):
        assert float(f) == pytest.approx(float(s), rel=1e-4, abs=1e-10)
    assert float(fast_tied) == pytest.approx(float(slow_tied), rel=1e-4)
