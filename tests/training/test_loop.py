"""The training loop on synthetic token windows: loss against the HF models' own loss, schedule,
gradient accumulation, held-out evaluation, and bitwise resume."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from fmaudit.models.build import build_model
from fmaudit.tokenizer import build_tokenizer, encode_windows
from fmaudit.training.data import IGNORE, EvalSet, LabelRule, tiled_stream
from fmaudit.training.loop import LMLoss, build_scheduler, evaluate, lr_factor, train_member
from fmaudit.training.recipes import load_recipe
from fmaudit.training.resume import load_state

SEQ = 18


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("kmer:3")


@pytest.fixture(scope="module")
def windows(tok):
    rng = random.Random(1)
    texts = ["".join(rng.choice("ACGT") for _ in range(48)) for _ in range(48)]
    return encode_windows(tok, texts, SEQ)


def _recipe(**kw):
    base = dict(tokenizer="kmer:3", seq_len=SEQ, hidden_size=16, num_layers=1, num_heads=2,
                intermediate_size=32, batch_size=8, max_steps=6, eval_every=3, eval_windows=8,
                dropout=0.1)
    return load_recipe("tiny").replace(**{**base, **kw})


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate's state is per process: these tests' CPU Accelerators must neither meet a GPU
    state left by another test nor leave theirs to later in-process training on a GPU."""
    from fmaudit.training.ensemble import _forget_accelerator_state

    _forget_accelerator_state()
    yield
    _forget_accelerator_state()


def _accelerator(accum: int = 1):
    from accelerate import Accelerator

    return Accelerator(cpu=True, gradient_accumulation_steps=accum)


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_loss_sum_equals_hf_mean_loss_times_terms(tok, windows, objective: str) -> None:
    r = _recipe(objective=objective)
    model = build_model(r, tok, seed=0).eval()
    batch = tiled_stream(windows, 8, LabelRule.from_tokenizer(tok, objective, 0.15), 0
                         ).global_batch(0)
    ours = LMLoss(model, objective)(batch.input_ids, batch.attention_mask, batch.labels)
    # the HF model computes full logits and shifts clm labels itself
    hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
               labels=batch.labels).loss
    assert batch.n_targets > 0
    torch.testing.assert_close(ours / batch.n_targets, hf, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_formula(schedule: str) -> None:
    r = _recipe(max_steps=20, warmup_fraction=0.25, schedule=schedule, lr=1.0)
    w, t = 5, 20
    for step in range(t):
        if step < w:
            expected = (step + 1) / w
        else:
            q = (step - w) / (t - w)
            expected = {"cosine": 0.5 * (1 + math.cos(math.pi * q)), "linear": 1 - q,
                        "constant": 1.0}[schedule]
        assert lr_factor(step, r) == pytest.approx(expected)
    # LambdaLR applies factor(step) during optimiser step `step`
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, r)
    seen = []
    for _ in range(t):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_factor(s, r) for s in range(t)])


def test_evaluate_equals_a_direct_loop(tok, windows) -> None:
    r = _recipe()
    rule = LabelRule.from_tokenizer(tok, "mlm", 0.15)
    ev = EvalSet.build({k: v[:7] for k, v in windows.items()}, rule)
    model = build_model(r, tok, seed=1)
    acc = _accelerator()
    wrapped = acc.prepare(LMLoss(model, "mlm"))
    got = evaluate(acc, wrapped, ev, per_process=3, objective="mlm")
    assert wrapped.training  # evaluation puts the model back in train mode
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(ev)):  # one window at a time, HF's own loss
            lab = ev.labels[i:i + 1]
            k = int((lab != IGNORE).sum())
            total += float(model(input_ids=ev.input_ids[i:i + 1], labels=lab).loss) * k
            n += k
    assert got == pytest.approx(total / n, rel=1e-5)


def _train(tok, windows, tmp: Path, accum: int = 1, stop_after: int | None = None,
           save_every: int = 0, **kw):
    r = _recipe(grad_accum=accum, **kw)
    rule = LabelRule.from_tokenizer(tok, r.objective, r.mask_prob)
    stream = tiled_stream(windows, r.batch_size, rule, 0)
    ev = EvalSet.build({k: v[:8] for k, v in windows.items()}, rule)
    model = build_model(r, tok, seed=2)
    acc = _accelerator(accum)
    try:
        return train_member(acc, model, r, stream, ev, seed=2, work_dir=tmp,
                            save_every=save_every, stop_after=stop_after)
    finally:
        acc.free_memory()


def test_gradient_accumulation_matches_one_big_batch(tok, windows, tmp_path: Path) -> None:
    m1, p1, _ = _train(tok, windows, tmp_path / "a", accum=1, dropout=0.0)
    m2, p2, _ = _train(tok, windows, tmp_path / "b", accum=4, dropout=0.0)
    assert p1.chain == p2.chain  # same data stream
    assert p1.train_losses == pytest.approx(p2.train_losses, rel=1e-5)
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_training_lowers_the_loss_and_logs_heldout(tok, windows, tmp_path: Path) -> None:
    _, prog, _ = _train(tok, windows, tmp_path, max_steps=30, eval_every=10, lr=1e-2,
                        dropout=0.0)
    assert prog.step == 30
    assert [e["step"] for e in prog.evals] == [10, 20, 30]
    assert prog.tokens == 30 * 8 * SEQ
    first, last = sum(prog.train_losses[:5]) / 5, sum(prog.train_losses[-5:]) / 5
    assert last < first


def test_interrupted_then_resumed_is_bitwise_equal(tok, windows, tmp_path: Path) -> None:
    ref, ref_prog, _ = _train(tok, windows, tmp_path / "ref")
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        _train(tok, windows, work, save_every=2, stop_after=5)
    saved = load_state(work, seed=2, data_seed=0, recipe_fingerprint=_recipe().fingerprint())
    assert saved is not None and saved[0].step == 4  # the last checkpoint before the stop
    model, prog, _ = _train(tok, windows, work, save_every=2)
    assert prog.step == ref_prog.step and prog.chain == ref_prog.chain
    assert prog.train_losses == ref_prog.train_losses  # steps 5 and 6 redone identically
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_state_of_another_recipe_is_refused(tok, windows, tmp_path: Path) -> None:
    from fmaudit.errors import FmauditError

    with pytest.raises(KeyboardInterrupt):
        _train(tok, windows, tmp_path, save_every=2, stop_after=2)
    with pytest.raises(FmauditError, match="recipe_fingerprint"):
        _train(tok, windows, tmp_path, save_every=2, lr=0.5)


def test_prefetcher_returns_the_same_batches(tok, windows) -> None:
    """The GPU path builds batch s+1 in a thread; forced on here, it must change nothing."""
    from fmaudit.training.loop import _Prefetcher

    stream = tiled_stream(windows, 8, LabelRule.from_tokenizer(tok, "mlm", 0.15), 0)
    pre = _Prefetcher(stream, 3, 9, enabled=True)
    try:
        for step in range(3, 9):
            got, want = pre.get(step), stream.global_batch(step)
            assert got.step == step
            assert torch.equal(got.input_ids, want.input_ids)
            assert torch.equal(got.labels, want.labels)
    finally:
        pre.close()


def test_training_again_with_other_settings_in_one_process(tmp_path: Path) -> None:
    """accelerate alone refuses a second Accelerator with another precision in a process
    ("restart your runtime"); fmaudit starts the single-process case from a clean state."""
    from accelerate import Accelerator

    from fmaudit.training.ensemble import make_accelerator

    Accelerator(cpu=True, mixed_precision="bf16")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(cpu=True, mixed_precision="no")
    assert make_accelerator(_recipe(), "no", [], tmp_path).mixed_precision == "no"


def test_final_step_is_always_evaluated(tok, windows, tmp_path: Path) -> None:
    _, prog, _ = _train(tok, windows, tmp_path, max_steps=7, eval_every=3)
    assert [e["step"] for e in prog.evals] == [3, 6, 7]


def test_train_targets_are_each_steps_loss_terms(tok, windows, tmp_path: Path) -> None:
    """final_train_loss weights steps by their loss terms (masked positions), not tokens."""
    r = _recipe()
    stream = tiled_stream(windows, r.batch_size, LabelRule.from_tokenizer(tok, "mlm", 0.15), 0)
    _, prog, _ = _train(tok, windows, tmp_path)
    assert prog.train_targets == [stream.global_batch(s).n_targets for s in range(6)]
    assert prog.train_targets != [stream.global_batch(s).n_tokens for s in range(6)]


def test_no_weight_decay_on_biases_and_norms(tok) -> None:
    from fmaudit.training.loop import build_optimizer

    r = _recipe(weight_decay=0.05)
    model = build_model(r, tok, seed=0)
    opt = build_optimizer(model, r)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(decay_of) == len(params)
    for p in params:
        assert decay_of[id(p)] == (0.05 if p.ndim >= 2 else 0.0)


def test_gradients_are_clipped_to_the_recipes_norm(tok, windows, tmp_path: Path,
                                                   monkeypatch) -> None:
    """clip_grad_norm_ once per optimiser step with the recipe's limit; a tiny limit changes
    the weights, no limit (0) never calls it."""
    from accelerate import Accelerator

    calls = []
    real = Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    clipped, _, _ = _train(tok, windows, tmp_path / "a", max_steps=2, grad_clip=1e-4,
                           dropout=0.0)
    assert calls == [1e-4, 1e-4]
    calls.clear()
    free, _, _ = _train(tok, windows, tmp_path / "b", max_steps=2, grad_clip=0.0, dropout=0.0)
    assert calls == []
    assert any(not torch.equal(a, b) for a, b in zip(clipped.state_dict().values(),
                                                     free.state_dict().values(), strict=True))


def test_dropout_draws_differ_from_step_to_step(tok, windows, tmp_path: Path,
                                                monkeypatch) -> None:
    """Each step seeds dropout from (seed, step, rank): a fixed seed would reuse one mask."""
    import fmaudit.training.loop as loop

    seeds = []
    real = torch.manual_seed
    monkeypatch.setattr(loop.torch, "manual_seed", lambda s: seeds.append(s) or real(s))
    _train(tok, windows, tmp_path, max_steps=3)
    steps = seeds[-3:]  # (the model's init seed comes first)
    assert steps == [loop.derive_seed(2, step, 0, loop._DROPOUT_SALT) for step in range(3)]
    assert len(set(steps)) == 3
