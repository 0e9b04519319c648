"""Atomic writes: nothing half-written under the final name, usual permissions."""

import os
import signal
import stat
from pathlib import Path

import pytest

from fmaudit.io import (
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    interrupts_deferred,
    replace_path,
)


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_replace_is_all_or_nothing(tmp_path):
    target = tmp_path / "r.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new but unfinished")
        raise RuntimeError
    assert target.read_text() == "old"


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"v": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert (tmp_path / "d" / "inner").read_text() == "y"


def test_output_dir_removes_only_the_empty_folders_it_created(tmp_path):
    from fmaudit.io import output_dir

    with pytest.raises(RuntimeError), output_dir(tmp_path / "a" / "b" / "c", "--out"):
        raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []  # a, a/b and a/b/c are gone
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError), output_dir(tmp_path / "a" / "b", "--out") as out:
        (out / "partial.txt").write_text("kept")  # something was written: nothing is removed
        raise RuntimeError("the run failed")
    assert (tmp_path / "a" / "b" / "partial.txt").exists()
    with output_dir(tmp_path / "ok", "--out") as out:  # success: the folder stays
        pass
    assert out.is_dir()


def test_output_dir_that_cannot_be_written_leaves_nothing(tmp_path):
    from fmaudit.errors import FmauditError
    from fmaudit.io import output_dir

    (tmp_path / "afile").write_text("x")
    with pytest.raises(FmauditError, match="exists and is not a folder"), \
            output_dir(tmp_path / "afile", "--out"):
        pass
    with pytest.raises(FmauditError, match="empty path"), output_dir("", "--out"):
        pass


def _interrupting_renames(monkeypatch, at: int, sig: int = signal.SIGINT) -> list[int]:
    """os.replace that sends this process ``sig`` during its ``at``-th call (as a Ctrl-C
    landing between two renames of a swap would)."""
    calls: list[int] = []
    real = os.replace

    def replace(src, dst):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), sig)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("at", [1, 2])  # the two renames of a swap
def test_an_interrupt_waits_for_a_swap(tmp_path, monkeypatch, at):
    """replace_path moves the old folder aside, then the new one in: a Ctrl-C between the two
    renames takes effect after both (the folder is never missing)."""
    dst = tmp_path / "figures"
    dst.mkdir()
    (dst / "old.svg").write_text("old")
    src = tmp_path / "new"
    src.mkdir()
    (src / "new.svg").write_text("new")
    _interrupting_renames(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        replace_path(src, dst)
        raise AssertionError("the interrupt was lost")  # only reached when it arrives late
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]
    assert (dst / "new.svg").read_text() == "new"


def test_interrupts_deferred_restores_the_handlers_and_nests(monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is not before  # still deferring
        raise AssertionError("not raised at the end of the outer block")
    assert signal.getsignal(signal.SIGINT) is before
    with interrupts_deferred():  # nothing received: nothing raised
        pass


@pytest.mark.parametrize("at", range(1, 7))  # 3 swaps of 2 renames each
def test_an_interrupted_render_leaves_one_whole_set(tmp_path, monkeypatch, at):
    """A Ctrl-C at any rename of a re-render leaves the page, the Markdown and the figures of
    one render (here: all new), with no staging or .old leftovers."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
    from report_checks import load_fixture

    from fmaudit.report import render_report

    first = load_fixture("report_minimal.json")
    render_report(first, tmp_path)
    second = load_fixture("report_three.json")
    calls = _interrupting_renames(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        render_report(second, tmp_path)
        raise AssertionError(f"the interrupt was lost ({len(calls)} renames)")
    monkeypatch.undo()
    expected = tmp_path / "expected"
    render_report(second, expected)
    for name in ("report.html", "report.md"):
        assert (tmp_path / name).read_bytes() == (expected / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == \
        sorted(p.name for p in (expected / "figures").iterdir())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_read_limited_takes_a_file_of_exactly_the_limit(tmp_path) -> None:
    from fmaudit.io import TooLargeError, read_limited

    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_limited(path, 10) == b"x" * 10
    with pytest.raises(TooLargeError):
        read_limited(path, 9)


def test_atomic_writes_sync_before_renaming_and_keep_usual_permissions(tmp_path,
                                                                      monkeypatch) -> None:
    """The data is on disk before the name points at it; a writer that replaced the staged
    file with a 0600 one (safetensors, transformers) still leaves 0644 (umask 022); files
    staged in an atomic folder too, and a link there does not change its target."""
    import os

    from fmaudit.io import atomic_dir, atomic_path

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or
                        real_replace(a, b))
    mask = os.umask(0o022)
    try:
        target = tmp_path / "out.bin"
        with atomic_path(target) as tmp:
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"data")
            os.close(fd)
        assert events == ["fsync", "replace"]
        assert target.read_bytes() == b"data" and (target.stat().st_mode & 0o777) == 0o644
        private = tmp_path / "private"
        private.write_text("secret")
        os.chmod(private, 0o600)
        folder = tmp_path / "ckpt"
        with atomic_dir(folder) as staging:
            fd = os.open(staging / "w.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            (staging / "link").symlink_to(private)
        assert (folder / "w.safetensors").stat().st_mode & 0o777 == 0o644
        assert private.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
