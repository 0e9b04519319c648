"""The Fisher pass against one backward pass per token, and the tied/untied attribution."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from fmaudit.models.groups import group_of, input_embedding_name, untie_output_weight
from fmaudit.passes.eval_data import make_batch
from fmaudit.passes.fisher import pick_targets, run_fisher_pass

V, L, B = 40, 12, 5


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "bert":
        cfg = BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=L)
        return BertForMaskedLM(cfg).eval()
    cfg = GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=L,
                     bos_token_id=2, eos_token_id=3)
    return GPT2LMHeadModel(cfg).eval()


def batch(objective: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    special = torch.zeros(B, L, dtype=torch.long)
    special[:, 0] = special[:, -1] = 1
    attn = torch.ones(B, L, dtype=torch.long)
    attn[1, -3:] = 0  # one padded window
    ids[1, -3:] = 0
    special[1, -3:] = 1
    enc = {"input_ids": ids, "attention_mask": attn, "special_tokens_mask": special}
    return make_batch(enc, torch.arange(10, 10 + B), objective, seed=3, mask_prob=0.3,
                      mask_token_id=4)


@pytest.mark.parametrize("kind,objective", [("bert", "mlm"), ("gpt2", "clm")])
def test_per_token_fisher_matches_one_backward_per_token(kind, objective):
    model = tiny(kind)
    b = batch(objective)
    result = run_fisher_pass(model, [b], estimator="per-token", seed=0)
    # slow reference: untie a copy, one backward per chosen token, square, sum per group
    ref = tiny(kind)
    ref.load_state_dict(model.state_dict())
    out_name = untie_output_weight(ref)
    in_name = input_embedding_name(ref)
    rows, cols, lab = pick_targets(b, 0)
    sums: dict[str, float] = {}
    tied_view: dict[str, float] = {}
    for r, c, li in zip(rows.tolist(), cols.tolist(), lab.tolist(), strict=True):
        ref.zero_grad(set_to_none=True)
        one = slice(r, r + 1)
        logits = ref(input_ids=b.input_ids[one], attention_mask=b.attention_mask[one]).logits
        torch.nn.functional.cross_entropy(logits[0, c][None], b.labels[li][None]).backward()
        params = dict(ref.named_parameters())
        for name, p in params.items():
            sq = float(p.grad.double().pow(2).sum())
            sums[group_of(name)] = sums.get(group_of(name), 0.0) + sq
            if name not in (in_name, out_name):
                tied_view[group_of(name)] = tied_view.get(group_of(name), 0.0) + sq
        both = float((params[in_name].grad + params[out_name].grad).double().pow(2).sum())
        tied_view["embeddings"] = tied_view.get("embeddings", 0.0) + both
    n = rows.numel()
    assert result.tokens == n
    for g, v in sums.items():
        assert result.sums[g] == pytest.approx(v / n, rel=1e-4)
    assert result.tied
    # tied view: the shared matrix counted once (its summed gradient squared) under embeddings
    for g in result.groups:
        assert result.sums_tied[g] == pytest.approx(tied_view.get(g, 0.0) / n, rel=1e-4, abs=1e-12)


def test_untied_gradients_add_up_to_the_tied_gradient():
    model = tiny("bert")
    b = batch("mlm")
    tied_grads = {}
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    torch.nn.functional.cross_entropy(logits[b.target_mask], b.labels).backward()
    emb = model.get_input_embeddings().weight.grad.clone()
    tied_grads["emb"] = emb

    untied = tiny("bert")
    untied.load_state_dict(model.state_dict())
    out_name = untie_output_weight(untied)
    in_name = input_embedding_name(untied)
    untied.zero_grad(set_to_none=True)
    logits2 = untied(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert torch.allclose(logits, logits2, atol=1e-6)  # untying does not change the function
    torch.nn.functional.cross_entropy(logits2[b.target_mask], b.labels).backward()
    params = dict(untied.named_parameters())
    total = params[in_name].grad + params[out_name].grad
    assert torch.allclose(total, tied_grads["emb"], atol=1e-6)


def test_batch_estimator_is_squared_batch_mean_gradient():
    model = tiny("bert")
    b = batch("mlm")
    result = run_fisher_pass(model, [b], estimator="batch")
    ref = tiny("bert")
    ref.load_state_dict(model.state_dict())
    untie_output_weight(ref)
    logits = ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    torch.nn.functional.cross_entropy(logits[b.target_mask], b.labels).backward()
    sums: dict[str, float] = {}
    for name, p in ref.named_parameters():
        sums[group_of(name)] = sums.get(group_of(name), 0.0) + float(p.grad.double().pow(2).sum())
    n = b.labels.numel()
    for g, v in sums.items():
        assert result.sums[g] == pytest.approx(v / n, rel=1e-4)
    # the tied view: the tied model's own gradient (both roles summed), squared once
    tied = tiny("bert")
    tied.load_state_dict(model.state_dict())
    logits = tied(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    torch.nn.functional.cross_entropy(logits[b.target_mask], b.labels).backward()
    tied_sums: dict[str, float] = {}
    for name, p in tied.named_parameters():
        tied_sums[group_of(name)] = tied_sums.get(group_of(name), 0.0) + \
            float(p.grad.double().pow(2).sum())
    assert result.tied and set(result.sums_tied) == set(tied_sums)
    for g, v in tied_sums.items():
        assert result.sums_tied[g] == pytest.approx(v / n, rel=1e-4)


def test_sampled_labels_are_seeded():
    model = tiny("bert")
    b = batch("mlm")
    r1 = run_fisher_pass(model, [b], labels="sampled", seed=1)
    r2 = run_fisher_pass(model, [b], labels="sampled", seed=1)
    r3 = run_fisher_pass(model, [b], labels="empirical", seed=1)
    assert r1.sums == r2.sums
    assert r1.sums != r3.sums


def test_half_precision_request_keeps_the_one_backward_path(monkeypatch):
    """Expanded weights fail under autocast (a bf16 output gradient times a float32 weight):
    a bf16 audit on a GPU used to fall back to one backward per window. The per-sample path
    must not enter autocast; a real CPU bf16 autocast stands in for the GPU's here."""
    import fmaudit.passes.fisher as fisher

    monkeypatch.setattr(fisher, "autocast",
                        lambda device, dtype: torch.autocast("cpu", dtype=torch.bfloat16))

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to one backward per window")

    monkeypatch.setattr(fisher, "_squared_grads_loop", no_fallback)
    model, b = tiny("bert"), batch("mlm")
    half = run_fisher_pass(model, [b], dtype=torch.bfloat16)
    full = run_fisher_pass(model, [b])
    assert half.sums == pytest.approx(full.sums, rel=1e-6)


def test_targets_are_uniform_over_each_windows_predicted_positions():
    """One target per window, drawn uniformly from its predicted positions by the window's own
    generator: a chi-square test over many windows, and other seeds draw otherwise."""
    from scipy.stats import chisquare

    from fmaudit.passes.eval_data import EvalBatch

    n, cols = 4000, [2, 5, 6, 9]
    target = torch.zeros(n, L, dtype=torch.bool)
    target[:, cols] = True
    b = EvalBatch(torch.arange(n), torch.zeros(n, L, dtype=torch.long),
                  torch.ones(n, L, dtype=torch.long), target,
                  torch.arange(n * len(cols)))
    rows, chosen, lab = pick_targets(b, seed=0)
    assert rows.tolist() == list(range(n))
    counts = [int((chosen == c).sum()) for c in cols]
    assert sum(counts) == n and chisquare(counts).pvalue > 1e-3
    # the label index points at the chosen position's label (row-major order of the mask)
    assert lab.tolist() == [r * len(cols) + cols.index(c) for r, c in
                            zip(rows.tolist(), chosen.tolist(), strict=True)]
    _, other, _ = pick_targets(b, seed=1)
    assert 0.6 < float((other != chosen).double().mean()) < 0.9  # 3/4 expected


def test_sampled_labels_follow_the_models_distribution():
    """Sampled (true-Fisher) labels are draws from softmax(logits): a chi-square test over
    many windows, reproducible for a seed."""
    from scipy.stats import chisquare

    from fmaudit.passes.fisher import sample_labels

    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    n = 4000
    logits = probs.log().expand(n, -1)
    labels = sample_labels(logits, torch.arange(n), seed=0)
    counts = torch.bincount(labels, minlength=5)
    assert chisquare(counts.numpy(), (probs * n).numpy()).pvalue > 1e-3
    assert torch.equal(labels, sample_labels(logits, torch.arange(n), seed=0))
    assert not torch.equal(labels, sample_labels(logits, torch.arange(n), seed=1))
