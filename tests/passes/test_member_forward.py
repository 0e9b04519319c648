"""Logits at the predicted positions only: equal to the full forward on every architecture."""

import pytest
import torch

from fmaudit.passes.predictions import MemberForward, target_logits
from tests.models.test_architectures import ARCHS, batch, build


@pytest.mark.parametrize("arch", ARCHS)
def test_head_on_targets_equals_full_forward(arch):
    model, objective = build(arch)
    model.eval()
    b = batch(objective)
    flat = b.target_mask.flatten().nonzero().squeeze(1)
    forward = MemberForward(model)
    assert forward.checked  # verified architectures skip the runtime check...
    forward.checked = False  # ...which this test runs anyway
    with torch.no_grad():
        logits, hidden = forward(b, flat, want_hidden=True)
        again, _ = forward(b, flat, want_hidden=False)  # after the one-time check
        full = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                     output_hidden_states=True)
    reference = target_logits(full.logits, flat)
    assert forward.split is not None, "the split should hold for the supported architectures"
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.allclose(again, reference, atol=1e-5)
    assert len(hidden) == len(full.hidden_states)


@pytest.mark.parametrize("arch", ARCHS)
def test_unpadded_batch_without_mask_equals_full_forward(arch):
    """The verified architectures run unpadded batches with no attention mask (no device sync
    in transformers' mask check): the logits and hidden states are the masked forward's."""
    model, objective = build(arch)
    model.eval()
    b = batch(objective)
    assert bool(b.attention_mask.all())
    flat = b.target_mask.flatten().nonzero().squeeze(1)
    forward = MemberForward(model)
    assert forward.mask_optional
    masks = []
    forward.split[0].register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")),
        with_kwargs=True)
    with torch.no_grad():
        logits, hidden = forward(b, flat, want_hidden=True, unpadded=True)
    assert masks == [None]
    with torch.no_grad():
        full = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                     output_hidden_states=True)
    torch.testing.assert_close(logits, target_logits(full.logits, flat), atol=1e-5, rtol=1e-5)
    for h, ref in zip(hidden, full.hidden_states, strict=True):
        torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)


def test_a_model_whose_forward_rescales_logits_keeps_the_full_forward():
    model, objective = build("gpt2")
    model.eval()
    original = model.forward

    def scaled(*args, **kwargs):  # a forward that does more than head(trunk(x))
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled
    b = batch(objective)
    flat = b.target_mask.flatten().nonzero().squeeze(1)
    forward = MemberForward(model)
    forward.checked = False  # as for an architecture outside MemberForward.VERIFIED
    with torch.no_grad():
        logits, _ = forward(b, flat, want_hidden=False)
        reference = target_logits(model(input_ids=b.input_ids,
                                        attention_mask=b.attention_mask).logits, flat)
    assert forward.split is None
    assert torch.allclose(logits, reference)
