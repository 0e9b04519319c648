"""The data stream: a pure function of (windows, data seed, step); shards, masks, fingerprint."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch

from fmaudit.passes.masking import choose_masked_positions
from fmaudit.tokenizer import build_tokenizer, encode_windows
from fmaudit.training.data import (
    IGNORE,
    EvalSet,
    LabelRule,
    StreamFingerprint,
    derive_seed,
    regular_token_range,
    sampled_stream,
    tiled_stream,
)

SEQ = 18  # [CLS] + 16 3-mers + [SEP]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("kmer:3")


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(48)) for _ in range(n)]


@pytest.fixture(scope="module")
def encoded(tok):
    return encode_windows(tok, _texts(40, 0), SEQ)


def _rule(tok, objective: str = "mlm") -> LabelRule:
    return LabelRule.from_tokenizer(tok, objective, 0.15)


def test_regular_range_excludes_specials(tok) -> None:
    first, n = regular_token_range(tok)
    assert (first, n) == (5, 64)
    assert set(range(first, first + n)).isdisjoint(tok.all_special_ids)


def test_batches_are_a_pure_function_of_the_step(tok, encoded) -> None:
    a = tiled_stream(encoded, 8, _rule(tok), data_seed=0)
    b = tiled_stream(encoded, 8, _rule(tok), data_seed=0)
    for step in (7, 0, 3, 12):  # any order: no hidden iterator state
        x, y = a.global_batch(step), b.global_batch(step)
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    other = tiled_stream(encoded, 8, _rule(tok), data_seed=1).global_batch(0)
    assert not torch.equal(other.input_ids, a.global_batch(0).input_ids)


def test_each_epoch_visits_every_window_once(tok, encoded) -> None:
    n = encoded["input_ids"].shape[0]  # 40 windows, batch 8: 5 steps per epoch
    stream = tiled_stream(encoded, 8, LabelRule.from_tokenizer(tok, "clm", 0.15), data_seed=0)
    for epoch in range(2):
        seen = torch.cat([stream.global_batch(s).input_ids
                          for s in range(epoch * 5, epoch * 5 + 5)])
        # clm keeps inputs unchanged: the epoch's rows are a permutation of the windows
        as_set = sorted(map(tuple, seen.tolist()))
        assert as_set == sorted(map(tuple, encoded["input_ids"].tolist()))
        assert len(seen) == n
    first = stream.global_batch(0).input_ids
    second_epoch = stream.global_batch(5).input_ids
    assert not torch.equal(first, second_epoch)  # a fresh order per epoch


def test_mlm_labels_and_corruption(tok, encoded) -> None:
    batch = tiled_stream(encoded, 16, _rule(tok), data_seed=0).global_batch(2)
    labelled = batch.labels != IGNORE
    regular = 16  # non-special positions per window
    # choose_masked_positions picks max(1, round(p * n)) positions per window
    assert labelled.sum(1).tolist() == [max(1, round(0.15 * regular))] * 16
    assert batch.n_targets == int(labelled.sum())
    # no label on [CLS]/[SEP]; labels are the original tokens of those windows
    assert not labelled[:, 0].any() and not labelled[:, -1].any()
    assert batch.n_tokens == 16 * SEQ
    unchanged = batch.input_ids == batch.labels
    masked = batch.input_ids == tok.mask_token_id
    assert (masked & labelled).sum() > (unchanged & labelled).sum()  # 80% [MASK]
    # the order does not depend on the objective: the clm stream shows the original windows
    original = tiled_stream(encoded, 16, _rule(tok, "clm"), 0).global_batch(2).input_ids
    assert torch.equal(batch.input_ids[~labelled], original[~labelled])
    assert torch.equal(batch.labels[labelled], original[labelled])


def test_masks_depend_on_sample_index_not_batch_size(tok, encoded) -> None:
    """The same sample gets the same mask whatever the global batch or position in it."""
    big = tiled_stream(encoded, 20, LabelRule.from_tokenizer(tok, "mlm", 0.15), 0)
    b = big.global_batch(0)
    eligible = torch.ones(1, SEQ, dtype=torch.bool)
    eligible[:, 0] = eligible[:, -1] = False
    for row in (0, 7, 19):
        sample = int(b.sample_ids[row])
        expected = choose_masked_positions(eligible, torch.tensor([sample]), 0, 0.15)[0]
        assert torch.equal(b.labels[row] != IGNORE, expected)


def test_shards_reassemble_the_global_batch(tok, encoded) -> None:
    batch = tiled_stream(encoded, 16, _rule(tok), 0).global_batch(1)
    for accum, world in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 4)):
        parts = [batch.shard(m, accum, r, world)["input_ids"]
                 for m in range(accum) for r in range(world)]
        assert all(p.shape[0] == 16 // (accum * world) for p in parts)
        assert torch.equal(torch.cat(parts), batch.input_ids)


def test_stream_fingerprint_is_a_sha256_chain(tok, encoded) -> None:
    stream = tiled_stream(encoded, 8, _rule(tok), 0)
    fp = StreamFingerprint()
    h = hashlib.sha256(b"fmaudit data stream v1").digest()
    for s in range(3):
        b = stream.global_batch(s)
        fp.update(b)
        payload = b"".join([
            b.input_ids.to(torch.int32).numpy().tobytes(),
            b.attention_mask.to(torch.uint8).numpy().tobytes(),
            b.labels.to(torch.int32).numpy().tobytes()])
        h = hashlib.sha256(h + payload).digest()
    assert fp.value() == "sha256:" + h.hex()
    resumed = StreamFingerprint(StreamFingerprint().state)
    assert resumed.state == StreamFingerprint.START


def test_sampled_stream_draws_per_chunk_and_restarts_anywhere(tok) -> None:
    calls: list[tuple[int, int]] = []

    def draw(n: int, seed: int) -> list[str]:
        calls.append((n, seed))
        return _texts(n, seed % 10_000)

    def encode(texts: list[str]):
        return encode_windows(tok, texts, SEQ)

    a = sampled_stream(draw, encode, 4, _rule(tok), data_seed=5, chunk_steps=3)
    steps = [a.global_batch(s) for s in range(7)]
    assert [n for n, _ in calls] == [12, 12, 12]  # chunks 0, 1, 2
    assert calls[0][1] == derive_seed(5, 0, 0x5A3)
    # every chunk draws its own windows (a fixed seed would loop a genome's first chunk)
    assert [seed for _, seed in calls] == [derive_seed(5, c, 0x5A3) for c in range(3)]
    b = sampled_stream(draw, encode, 4, _rule(tok), data_seed=5, chunk_steps=3)
    for s in (5, 1):  # a resumed run starts mid-chunk
        assert torch.equal(b.global_batch(s).input_ids, steps[s].input_ids)
        assert torch.equal(b.global_batch(s).labels, steps[s].labels)


def test_eval_set_batches_cover_every_window_once(tok) -> None:
    enc = encode_windows(tok, _texts(11, 3), SEQ)
    ev = EvalSet.build(enc, _rule(tok))
    # held-out masks replace every chosen position by [MASK] (the audit's rule)
    labelled = ev.labels != IGNORE
    assert (ev.input_ids[labelled] == tok.mask_token_id).all()
    for world in (1, 2, 3):
        per_rank = [ev.batches(2, r, world) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # same number of forwards everywhere
        labels = torch.cat([b["labels"] for bs in per_rank for b in bs])
        assert int((labels != IGNORE).sum()) == int(labelled.sum())


def test_clm_labels_are_regular_tokens(tok, encoded) -> None:
    batch = tiled_stream(encoded, 4, LabelRule.from_tokenizer(tok, "clm", 0.15), 0).global_batch(0)
    assert torch.equal(batch.input_ids[:, 1:-1], batch.labels[:, 1:-1])
    assert (batch.labels[:, [0, -1]] == IGNORE).all()
    assert batch.n_targets == 4 * (SEQ - 2)  # next-token terms whose target is regular


# -- the masking rules, against their own per-window draws ---------------------------------------
def test_bert_corruption_follows_each_windows_draws(tok) -> None:
    """80% [MASK], 10% a random REGULAR token, 10% unchanged, decided by the window's own
    uniform draw (rebuilt here from window_generator), and the shares over many windows."""
    from fmaudit.passes.masking import bert_corruption, window_generator

    rule = _rule(tok)
    n, length = 3000, 20
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(rule.first_regular_id, rule.first_regular_id + rule.n_regular,
                        (n, length), generator=gen)
    masked = torch.rand(n, length, generator=gen) < 0.3
    wids = torch.arange(100, 100 + n)
    corrupted, labels = bert_corruption(ids, masked, wids, 7, rule.mask_token_id,
                                        rule.n_regular, rule.first_regular_id, salt=5)
    assert torch.equal(labels[masked], ids[masked]) and bool((labels[~masked] == -100).all())
    assert torch.equal(corrupted[~masked], ids[~masked])
    kinds = {"mask": 0, "random": 0, "same": 0}
    for row in range(0, n, 97):  # the draws themselves, on a sample of windows
        g = window_generator(7, int(wids[row]), 5 + 1_000_003)
        u = torch.rand(length, generator=g)
        rand = torch.randint(rule.n_regular, (length,), generator=g) + rule.first_regular_id
        for t in masked[row].nonzero().flatten().tolist():
            want = (rule.mask_token_id if u[t] < 0.8 else int(rand[t]) if u[t] < 0.9
                    else int(ids[row, t]))
            assert int(corrupted[row, t]) == want
    changed = corrupted[masked]
    kinds["mask"] = int((changed == rule.mask_token_id).sum())
    kinds["same"] = int((changed == ids[masked]).sum())
    kinds["random"] = int(masked.sum()) - kinds["mask"] - kinds["same"]
    shares = {k: v / int(masked.sum()) for k, v in kinds.items()}
    assert abs(shares["mask"] - 0.8) < 0.02 and abs(shares["random"] - 0.1) < 0.015
    # a random replacement is a regular token, never a special one
    replaced = changed[changed != rule.mask_token_id]
    assert bool((replaced >= rule.first_regular_id).all())
    assert bool((replaced < rule.first_regular_id + rule.n_regular).all())


@pytest.mark.parametrize(("n", "prob", "count"), [(17, 0.15, 3), (16, 0.15, 2), (10, 0.05, 1),
                                                  (3, 0.1, 1), (20, 1.0, 20)])
def test_mask_count_is_the_rounded_share_and_at_least_one(n: int, prob: float,
                                                          count: int) -> None:
    eligible = torch.zeros(2, n + 2, dtype=torch.bool)
    eligible[:, 1:-1] = True
    chosen = choose_masked_positions(eligible, torch.tensor([0, 1]), 0, prob)
    assert chosen.sum(dim=1).tolist() == [count, count]
    assert not bool((chosen & ~eligible).any())


def test_salt_and_seed_give_independent_masks() -> None:
    eligible = torch.ones(64, 40, dtype=torch.bool)
    wids = torch.arange(64)
    base = choose_masked_positions(eligible, wids, 0, 0.15)
    assert torch.equal(base, choose_masked_positions(eligible, wids, 0, 0.15))
    for other in (choose_masked_positions(eligible, wids, 0, 0.15, salt=1),
                  choose_masked_positions(eligible, wids, 1, 0.15)):
        assert not torch.equal(base, other)


def test_training_masks_follow_the_data_seed(tok, encoded) -> None:
    rule = _rule(tok)
    sample_ids = torch.arange(8)
    part = {k: v[:8] for k, v in encoded.items()}
    a = rule.train_inputs(part, sample_ids, seed=0)[1]
    assert torch.equal(a, rule.train_inputs(part, sample_ids, seed=0)[1])
    assert not torch.equal(a, rule.train_inputs(part, sample_ids, seed=1)[1])


def test_held_out_masks_are_the_reports(tok, encoded) -> None:
    """The training run's held-out loss is scored on the masks `fmaudit report` draws for
    the same windows (window index i, the report's seed 0)."""
    from fmaudit.training.data import EvalSet

    rule = _rule(tok)
    ev = EvalSet.build(encoded, rule)
    eligible = encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()
    n = encoded["input_ids"].shape[0]
    expected = choose_masked_positions(eligible, torch.arange(n), 0, rule.mask_prob)
    assert torch.equal(ev.labels != -100, expected)


def test_eval_batches_cover_every_row_once_when_a_process_has_none(tok, encoded) -> None:
    """4 rows, 2 per process, 3 processes: the third gets a label-free filler, nothing is
    counted twice."""
    from fmaudit.training.data import EvalSet

    ev = EvalSet.build({k: v[:4] for k, v in encoded.items()}, _rule(tok))
    labelled = [int((b["labels"] != -100).sum())
                for rank in range(3) for b in ev.batches(2, rank, 3)]
    assert sum(labelled) == int((ev.labels != -100).sum())
    assert [len(ev.batches(2, rank, 3)) for rank in range(3)] == [1, 1, 1]
    assert labelled[2] == 0
