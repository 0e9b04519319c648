"""Atomic writes: nothing half-written under the final name, usual permissions."""

import os
import stat

import pytest

from fmaudit.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text


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
