"""Tiny random BERT / GPT-2 families saved as Hugging Face folders, built inside the tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from fmaudit.tokenizer import build_tokenizer


def random_dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def tiny_model(kind: str, vocab: int, seed: int, max_len: int = 64, tok=None):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ids = {} if tok is None else {"pad_token_id": tok.pad_token_id}
    if kind == "bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=max_len, **ids)
        model = BertForMaskedLM(cfg)
    else:
        special = {} if tok is None else {"bos_token_id": tok.cls_token_id,
                                           "eos_token_id": tok.sep_token_id}
        cfg = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=max_len,
                         **ids, **special)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def save_member(path: Path, model, tok) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def save_family(root: Path, kind: str = "bert", seeds=(0, 1, 2), tokenizer: str = "kmer:3",
                prefix: str = "seed") -> list[Path]:
    tok = build_tokenizer(tokenizer)
    out = []
    for s in seeds:
        out.append(save_member(root / f"{prefix}{s}", tiny_model(kind, len(tok), s, tok=tok), tok))
    return out


def make_uniform(model) -> None:
    """Zero the BERT head transform so every logit is 0: a uniform prediction."""
    with torch.no_grad():
        t = model.cls.predictions.transform
        t.dense.weight.zero_()
        t.dense.bias.zero_()
        t.LayerNorm.weight.zero_()
        t.LayerNorm.bias.zero_()
        model.cls.predictions.bias.zero_()
