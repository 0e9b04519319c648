"""An interrupted `fmaudit report --out` resumes: the re-run skips what was saved and writes the
report the uninterrupted run writes, exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fmaudit.passes.fisher as fisher_pass
from fmaudit.metrics import DisagreementAccumulator
from fmaudit.passes.eval_data import batches
from fmaudit.passes.resume import STATE_DIR, Cadence, ResumeStore, clear_audit_state
from fmaudit.tokenizer import build_tokenizer
from tests.cliutil import child_env, one_error_line, run_main
from tests.tinymodels import random_dna, save_family

# 13 windows in batches of 4: four prediction batches, the last one short
ARGS = ["--samples", "13", "--seq-len", "32", "--batch-size", "4", "--fisher-samples", "6",
        "--k", "1,5,10"]


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[list[str], Path]:
    root = tmp_path_factory.mktemp("resume")
    members = [str(p) for p in save_family(root / "fam", "bert", seeds=(0, 1, 2))]
    genome = root / "g.fa"
    genome.write_text("".join(f">chr{i}\n{random_dna(6000, i)}\n" for i in (1, 2)))
    return members, genome


def _argv(family, out: Path, *extra: str) -> list[str]:
    members, genome = family
    return ["-q", "report", *members, "--corpus", genome, *ARGS, "--out", out, *extra]


def _report(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    for key in ("created", "timing"):
        rep.pop(key)
    return rep


@pytest.fixture(scope="module")
def clean(family, tmp_path_factory) -> dict:
    """The report of an uninterrupted run."""
    from fmaudit.cli import main

    out = tmp_path_factory.mktemp("clean") / "out"
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in _argv(family, out)])
    assert exc.value.code in (0, None)
    assert not (out / STATE_DIR).exists()  # nothing left behind by a finished report
    return _report(out)


class Calls:
    """Counts calls of a function and raises KeyboardInterrupt at call number ``stop_at``."""

    def __init__(self, fn, stop_at: int | None = None) -> None:
        self.fn, self.stop_at, self.n = fn, stop_at, 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        if self.n == self.stop_at:
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


def _count_updates(monkeypatch, stop_at: int | None = None) -> Calls:
    calls = Calls(DisagreementAccumulator.update, stop_at)
    monkeypatch.setattr(DisagreementAccumulator, "update",
                        lambda self, logits: calls(self, logits))
    return calls


def _count_fisher(monkeypatch, stop_at: int | None = None) -> Calls:
    calls = Calls(fisher_pass.run_fisher_pass, stop_at)
    monkeypatch.setattr(fisher_pass, "run_fisher_pass", calls)
    return calls


def _saved_progress(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(fh.metadata()["progress"])


def test_interrupted_prediction_pass_resumes_after_the_saved_batches(
        family, clean, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        updates = _count_updates(mp, stop_at=3)  # Ctrl-C in the third batch
        code, _, _ = run_main(_argv(family, out, "--resume-every", "1e-9"), capsys)
    assert code == 130 and not (out / "report.json").exists()
    state = out / STATE_DIR / "e0-predictions.rank0-of-1.safetensors"
    assert _saved_progress(state) == 2  # saved after each of the two finished batches
    with pytest.MonkeyPatch.context() as mp:
        updates, fisher = _count_updates(mp), _count_fisher(mp)
        code, _, err = run_main(_argv(family, out, "--resume-every", "1e-9"), capsys)
    assert code == 0, err
    assert "warning" not in err
    assert updates.n == 2 and fisher.n == 3  # batches 3 and 4 only; every member's Fisher
    assert _report(out) == clean  # bit for bit: the same sums in the same order
    assert not (out / STATE_DIR).exists()


def test_interrupted_fisher_pass_keeps_finished_members(family, clean, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _count_fisher(mp, stop_at=2)  # Ctrl-C in the second member's Fisher pass
        code, _, _ = run_main(_argv(family, out), capsys)  # the default cadence
    assert code == 130
    names = sorted(p.name for p in (out / STATE_DIR).iterdir())
    assert names == ["e0-fisher0.rank0-of-1.safetensors", "e0-predictions.rank0-of-1.safetensors"]
    with pytest.MonkeyPatch.context() as mp:
        updates, fisher = _count_updates(mp), _count_fisher(mp)
        code, _, err = run_main(_argv(family, out), capsys)
    assert code == 0, err
    assert updates.n == 0 and fisher.n == 2  # the prediction pass and member 0 are read back
    assert _report(out) == clean


def test_state_of_another_run_is_ignored_with_a_warning(family, clean, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _count_updates(mp, stop_at=3)
        run_main(_argv(family, out, "--resume-every", "1e-9", "--mask-prob", "0.3"), capsys)
    assert (out / STATE_DIR).is_dir()
    with pytest.MonkeyPatch.context() as mp:
        updates = _count_updates(mp)
        code, _, err = run_main(_argv(family, out), capsys)
    assert code == 0
    assert "not resuming from this state" in err and "other inputs or settings" in err
    assert err.count("warning") == 1
    assert updates.n == 4  # every batch again
    assert _report(out) == clean


def test_unreadable_state_is_ignored_with_a_warning(family, clean, tmp_path, capsys):
    out = tmp_path / "out"
    state = out / STATE_DIR / "e0-predictions.rank0-of-1.safetensors"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, _, err = run_main(_argv(family, out), capsys)
    assert code == 0
    assert "not resuming from this state" in err and "cannot be read" in err
    assert _report(out) == clean
    assert not (out / STATE_DIR).exists()


def _doctor(path: Path, tensors=None, extra=None) -> None:
    """Rewrite a state file with its own digest (so it is taken as this run's) but other
    content, as a bug or a hand edit could leave it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        old = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    if extra is not None:
        meta["extra"] = json.dumps(extra)
    save_file(old if tensors is None else tensors(old), str(path), metadata=meta)


@pytest.mark.parametrize(("tensors", "extra"), [
    (lambda t: {**t, "disagreement": t["disagreement"][:-1]}, {"groups": []}),  # shapes, fields
    (lambda t: {**t, "counts": t["counts"] * math.nan}, {"groups": [], "sums": "oops",
                                                         "sums_tied": None, "tokens": 1,
                                                         "tied": False}),  # values
])
def test_state_that_does_not_fit_is_ignored_with_a_warning(family, clean, tmp_path, capsys,
                                                           tensors, extra):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _count_fisher(mp, stop_at=2)
        run_main(_argv(family, out), capsys)
    folder = out / STATE_DIR
    _doctor(folder / "e0-predictions.rank0-of-1.safetensors", tensors=tensors)
    _doctor(folder / "e0-fisher0.rank0-of-1.safetensors", extra=extra)
    with pytest.MonkeyPatch.context() as mp:
        updates, fisher = _count_updates(mp), _count_fisher(mp)
        code, _, err = run_main(_argv(family, out), capsys)
    assert code == 0, err
    assert "not resuming from this state" in err and err.count("warning") == 1
    assert updates.n == 4 and fisher.n == 3  # everything again
    assert _report(out) == clean


def test_resume_every_zero_saves_nothing(family, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _count_fisher(mp, stop_at=2)
        code, _, _ = run_main(_argv(family, out, "--resume-every", "0"), capsys)
    assert code == 130 and not (out / STATE_DIR).exists()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_bad_resume_every_is_refused(family, tmp_path, value, capsys):
    code, out, err = run_main(_argv(family, tmp_path / "out", "--resume-every", value), capsys)
    one_error_line(code, out, err, "--resume-every")


@pytest.mark.slow
def test_killed_report_resumes_to_the_same_report(family, tmp_path):
    """kill -9 in the middle of the prediction pass, which saves after every batch: whatever
    moment the kill lands in, the re-run finds a whole state file (or the previous one)."""
    extra = ("--resume-every", "1e-9", "--batch-size", "1")  # 13 batches, 13 saves

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "fmaudit", *map(str, _argv(family, out, *extra))]

    env = child_env(OMP_NUM_THREADS="1")  # the same float reductions in every run
    baseline = subprocess.run(command(tmp_path / "clean"), env=env, capture_output=True,
                              text=True, timeout=300)
    assert baseline.returncode == 0, baseline.stderr
    out = tmp_path / "out"
    argv = command(out)
    child = subprocess.Popen(argv, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / STATE_DIR / "e0-predictions.rank0-of-1.safetensors"
    try:
        deadline = time.monotonic() + 120
        while not state.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert alive and state.exists()
    assert 1 <= _saved_progress(state) < 13
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "warning" not in rerun.stderr
    resumed, clean = _report(out), _report(tmp_path / "clean")
    assert resumed.pop("command") != clean.pop("command")  # (--out differs)
    assert resumed == clean
    assert not (out / STATE_DIR).exists()


# -- the pieces -------------------------------------------------------------------------------
def test_store_round_trip_and_isolation(tmp_path, capsys):
    key = {"members": ["a", "b"], "seed": 0}
    store = ResumeStore(tmp_path, key, rank=1, world=2, every_s=1.0, prefix="e0")
    sums = torch.randn(5, dtype=torch.float64)
    store.save("predictions", 3, {"sums": sums}, extra={"x": [1.5]}, part_key={"ctx": 4})
    saved = ResumeStore(tmp_path, key, 1, 2, 1.0, "e0").load("predictions", {"ctx": 4})
    assert saved.progress == 3 and saved.extra == {"x": [1.5]}
    assert torch.equal(saved.tensors["sums"], sums)  # float64, exactly
    assert capsys.readouterr().err == ""
    # another rank or process count has its own file; other inputs or part settings do not load
    assert ResumeStore(tmp_path, key, 0, 2, 1.0, "e0").load("predictions", {"ctx": 4}) is None
    assert capsys.readouterr().err == ""
    for other, part_key in (({"members": ["a", "c"], "seed": 0}, {"ctx": 4}), (key, {"ctx": 5})):
        assert ResumeStore(tmp_path, other, 1, 2, 1.0, "e0").load("predictions", part_key) is None
        assert "belongs to a run with other inputs" in capsys.readouterr().err
    # a negative batch count is no state
    store.save("broken", -1, {"sums": sums})
    assert store.load("broken") is None
    assert "cannot be read" in capsys.readouterr().err
    # every_s = 0: no state at all
    off = ResumeStore(tmp_path / "off", key, every_s=0.0)
    off.save("predictions", 1, {"sums": sums})
    assert not (tmp_path / "off").exists()


def test_clear_state_removes_every_process_state(tmp_path):
    folder = tmp_path / STATE_DIR
    for rank in (0, 1):
        ResumeStore(folder, {}, rank, 2, 1.0).save("predictions", 1, {"t": torch.zeros(2)})
    (folder / ".left-by-a-kill.tmp").write_text("")
    clear_audit_state(tmp_path)
    assert not folder.exists()


def test_state_of_another_process_count_is_named(tmp_path, capsys):
    folder = tmp_path / STATE_DIR
    ResumeStore(folder, {}, 0, 2, 1.0).save("predictions", 1, {"t": torch.zeros(2)})
    assert ResumeStore(folder, {}, 0, 1, 1.0).load("predictions") is None
    assert "saved by a run with another process count" in capsys.readouterr().err


def test_a_failed_save_is_warned_and_the_audit_goes_on(family, clean, tmp_path, capsys):
    """A full disk or a folder in the way of the state file: resuming is given up (said
    once), not the audit."""
    out = tmp_path / "out"
    (out / STATE_DIR / "e0-predictions.rank0-of-1.safetensors").mkdir(parents=True)
    code, _, err = run_main(_argv(family, out, "--resume-every", "1e-9"), capsys)
    assert code == 0, err
    assert err.count("cannot save resume state") == 1 and "going on without it" in err
    assert _report(out) == clean


def test_a_member_replaced_by_a_copy_with_the_same_dates_is_noticed(family, clean, tmp_path,
                                                                     capsys):
    """`cp -a` / `rsync -a` keep size and modification time; the inode and the change time
    still tell the new file from the old one."""
    import os
    import shutil

    members, genome = family
    copies = [str(shutil.copytree(m, tmp_path / "fam" / Path(m).name)) for m in members]
    argv = ["-q", "report", *copies, "--corpus", genome, *ARGS, "--out", tmp_path / "out",
            "--resume-every", "1e-9"]
    with pytest.MonkeyPatch.context() as mp:
        _count_updates(mp, stop_at=3)
        run_main(argv, capsys)
    weights = Path(copies[0]) / "model.safetensors"
    stat = weights.stat()
    weights.unlink()
    shutil.copy2(Path(copies[1]) / "model.safetensors", weights)  # seed1's weights as seed0
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    with pytest.MonkeyPatch.context() as mp:
        updates = _count_updates(mp)
        code, _, err = run_main(argv, capsys)
    assert code == 0, err
    assert "other inputs or settings" in err and updates.n == 4


def test_cadence():
    assert not Cadence(0).due()
    assert Cadence(1e-9).due()
    slow = Cadence(3600)
    assert not slow.due() and not slow.due()


def test_batches_from_a_start_batch_skip_exactly_those():
    tok = build_tokenizer("kmer:3")
    texts = [random_dna(60, i) for i in range(11)]
    for rank, world in ((0, 1), (1, 2)):
        every = list(batches(texts, tok, 16, "mlm", 0, 0.15, 3, rank=rank, world=world))
        for start in range(len(every) + 1):
            rest = list(batches(texts, tok, 16, "mlm", 0, 0.15, 3, rank=rank, world=world,
                                start_batch=start))
            assert len(rest) == len(every) - start
            for a, b in zip(rest, every[start:], strict=True):
                assert torch.equal(a.window_ids, b.window_ids)
                assert torch.equal(a.input_ids, b.input_ids)
                assert torch.equal(a.labels, b.labels)


def test_whole_batches_deal_the_single_process_batches():
    """Dealt whole, every process's batches are single-process batches, each exactly once."""
    tok = build_tokenizer("kmer:3")
    texts = [random_dna(60, i) for i in range(11)]

    def ids(rank: int, world: int, start: int = 0) -> list[list[int]]:
        return [b.window_ids.tolist() for b in batches(
            texts, tok, 16, "mlm", 0, 0.15, 3, rank=rank, world=world, whole_batches=True,
            start_batch=start)]

    single = ids(0, 1)
    assert single == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    for world in (2, 3, 5):
        dealt = [ids(rank, world) for rank in range(world)]
        assert sorted(b for part in dealt for b in part) == single
        assert dealt[0][0] == single[0] and dealt[1][0] == single[1]
    assert ids(1, 2, start=1) == [single[3]]
