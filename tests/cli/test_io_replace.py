"""io.replace_path / atomic_dir / writable_dir: whole content or the old one, never a mix."""

from __future__ import annotations

import pytest

from fmaudit.errors import FmauditError
from fmaudit.io import atomic_dir, replace_path, writable_dir


def test_replace_path_files_and_folders(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "b").write_text("old")
    replace_path(tmp_path / "new", tmp_path / "dst")
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["a"]
    (tmp_path / "f").write_text("1")
    (tmp_path / "g").write_text("2")
    replace_path(tmp_path / "f", tmp_path / "g")
    assert (tmp_path / "g").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "g"]  # no *.old left


def test_atomic_dir_over_a_file_leaves_nothing_behind(tmp_path):
    (tmp_path / "figures").write_text("x")
    with atomic_dir(tmp_path / "figures") as tmp:
        (tmp / "a.svg").write_text("<svg/>")
    assert (tmp_path / "figures" / "a.svg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "old.svg").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "figures") as tmp:
        (tmp / "new.svg").write_text("new")
        raise RuntimeError("render failed")
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["old.svg"]
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]


def test_writable_dir(tmp_path):
    assert writable_dir(tmp_path / "a" / "b", "--out").is_dir()
    (tmp_path / "file").write_text("x")
    for bad in ("", tmp_path / "file", tmp_path / "file" / "sub", "/proc/fmaudit-test"):
        with pytest.raises(FmauditError, match="--out"):
            writable_dir(bad, "--out")


def test_atomic_write_to_a_device_writes_through(tmp_path):
    import os
    import stat

    from fmaudit.io import atomic_write_text

    atomic_write_text("/dev/null", "discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device, not a file
    assert [p.name for p in tmp_path.iterdir()] == []
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_text(fifo, "through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temp file left
