"""Build an untrained model from a recipe: BERT for ``mlm``, GPT-2 for ``clm``.

The seed controls only the initial weights: the global RNGs are seeded right before the model is
built (as in accelerate's examples), and nothing else in training draws from that seed's stream
except dropout (re-seeded every step, see ``fmaudit.training.loop``).
"""

from __future__ import annotations

from typing import Any

from fmaudit.training.recipes import Recipe


def _special_id(tokenizer: Any, attr: str) -> int | None:
    value = getattr(tokenizer, attr, None)
    return int(value) if value is not None else None


def model_config(recipe: Recipe, tokenizer: Any) -> Any:
    """A transformers config from the recipe; vocab = ``len(tokenizer)``, positions = seq_len.

    ``attn_implementation="sdpa"`` (PyTorch scaled-dot-product attention) is requested for both
    architectures; it is the fast path on GPU and exact on CPU.
    """
    from transformers import BertConfig, GPT2Config

    vocab = len(tokenizer)
    pad = _special_id(tokenizer, "pad_token_id")
    cls = _special_id(tokenizer, "cls_token_id")
    sep = _special_id(tokenizer, "sep_token_id")
    if recipe.objective == "mlm":
        return BertConfig(
            vocab_size=vocab, hidden_size=recipe.hidden_size,
            num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
            intermediate_size=recipe.intermediate_size,
            hidden_dropout_prob=recipe.dropout, attention_probs_dropout_prob=recipe.dropout,
            max_position_embeddings=recipe.seq_len, type_vocab_size=1,
            pad_token_id=pad if pad is not None else 0,
            bos_token_id=cls, eos_token_id=sep, tie_word_embeddings=True,
            architectures=["BertForMaskedLM"], attn_implementation="sdpa",
        )
    return GPT2Config(
        vocab_size=vocab, n_embd=recipe.hidden_size, n_layer=recipe.num_layers,
        n_head=recipe.num_heads, n_inner=recipe.intermediate_size, n_positions=recipe.seq_len,
        resid_pdrop=recipe.dropout, embd_pdrop=recipe.dropout, attn_pdrop=recipe.dropout,
        pad_token_id=pad, bos_token_id=cls, eos_token_id=sep, tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"], attn_implementation="sdpa",
    )


def build_model(recipe: Recipe, tokenizer: Any, seed: int) -> Any:
    """An untrained ``BertForMaskedLM`` (mlm) or ``GPT2LMHeadModel`` (clm), fp32, train mode.

    The initial weights are a pure function of (recipe, vocabulary size, seed):
    ``transformers.set_seed(seed)`` seeds python, numpy and torch right before construction.
    """
    from transformers import BertForMaskedLM, GPT2LMHeadModel, set_seed

    config = model_config(recipe, tokenizer)
    set_seed(seed)
    cls = BertForMaskedLM if recipe.objective == "mlm" else GPT2LMHeadModel
    model = cls(config)
    model.train()
    return model
