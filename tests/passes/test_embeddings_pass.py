"""The static-embedding pass reads an untrained checkpoint's input embeddings."""

from __future__ import annotations

from pathlib import Path

import torch

from fmaudit.passes.embeddings import init_embeddings, input_embeddings
from tests.tinymodels import tiny_model


def test_init_embeddings_read_one_tensor_from_safetensors(tmp_path: Path, monkeypatch) -> None:
    init = tiny_model("bert", 40, seed=1)
    init.save_pretrained(tmp_path / "init", safe_serialization=True)
    trained = tiny_model("bert", 40, seed=2)

    def no_model_loading(*args, **kwargs):
        raise AssertionError("the whole init model was loaded")

    from transformers import AutoModelForMaskedLM

    monkeypatch.setattr(AutoModelForMaskedLM, "from_pretrained", no_model_loading)
    got = init_embeddings(str(tmp_path / "init"), trained)
    assert torch.equal(got, input_embeddings(init))
    assert not torch.equal(got, input_embeddings(trained))


def test_init_embeddings_fall_back_to_the_model_or_none(tmp_path: Path) -> None:
    init = tiny_model("gpt2", 40, seed=1)
    init.save_pretrained(tmp_path / "init", safe_serialization=True)
    # the trained model names its embeddings differently (BERT vs GPT-2): loaded as a model
    trained = tiny_model("bert", 40, seed=2)
    assert torch.equal(init_embeddings(str(tmp_path / "init"), trained), input_embeddings(init))
    assert init_embeddings(None, trained) is None
    assert init_embeddings(str(tmp_path / "missing"), trained) is None


def test_mean_pool_averages_real_tokens_only():
    """Padding must not dilute a window's mean (a slow loop over the real tokens)."""
    import torch

    from fmaudit.passes.predictions import mean_pool

    gen = torch.Generator().manual_seed(0)
    states = [torch.randn(3, 5, 4, generator=gen) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    pooled = mean_pool(states, mask)
    assert pooled.shape == (3, 2, 4)
    for b in range(3):
        real = int(mask[b].sum())
        for layer, h in enumerate(states):
            expected = sum(h[b, t] for t in range(real)) / real
            assert torch.allclose(pooled[b, layer], expected, atol=1e-6)
