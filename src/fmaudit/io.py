"""Atomic file output: write to a temporary sibling, fsync, rename.

A reader (or a resumed run) never sees a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` on success (a device
    or pipe at ``path`` is written through instead)."""
    path = Path(path)
    # a device or a pipe (/dev/null, /dev/stdout): renaming onto it would replace the device
    # itself when running as root, and its folder need not be writable
    special = path.exists() and not path.is_file() and not path.is_dir()
    if not special:
        path.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.gettempdir() if special else path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        # again: a writer that replaced the file (safetensors does) left mkstemp's 0600
        os.chmod(tmp_path, 0o666 & ~_umask())
        if special:
            with open(tmp_path, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON (sorted keys off, indent 2, NaN refused: numbers are numbers or null)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


_DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM")
                          if hasattr(signal, name))
_deferring = 0  # depth of nested interrupts_deferred blocks (main thread only)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM that arrive inside the block take effect when it ends.

    For the few renames that swap outputs into place: an interrupt between two of them would
    leave a folder missing or a set of files half old, half new. Signals can only be handled
    in the main thread; elsewhere this does nothing.
    """
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _deferring:  # an enclosing block defers already
        _deferring += 1
        try:
            yield
        finally:
            _deferring -= 1
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in _DEFERRED_SIGNALS}
    _deferring = 1
    try:
        yield
    finally:
        _deferring = 0
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(received):  # now, with the handlers restored
            signal.raise_signal(sig)


def replace_path(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` (a file or folder) onto ``dst``, replacing whatever ``dst`` is (a file or a
    folder). The old ``dst`` is moved aside first, so ``dst`` is always either the old or the
    complete new content (and an interrupt waits for the two renames, see
    :func:`interrupts_deferred`)."""
    src, dst = Path(src), Path(dst)
    with interrupts_deferred():
        if not dst.exists() and not dst.is_symlink():
            os.replace(src, dst)
            return
        old = dst.with_name(f".{dst.name}.old")
        if old.exists() or old.is_symlink():
            _remove(old)
        os.replace(dst, old)
        os.replace(src, dst)
        _remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it onto ``path`` when the block succeeds.

    An existing ``path`` (folder or file) is replaced only after the new content is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        _usual_permissions(tmp)
        replace_path(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _usual_permissions(folder: Path) -> None:
    """Files 0666 and folders 0777 less the umask, under ``folder``: writers that stage through
    ``mkstemp`` (transformers' and safetensors' checkpoint writers do) leave 0600, which others
    in a shared group cannot read."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):  # (os.walk does not enter linked folders)
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):  # chmod would change the link's target
                os.chmod(path, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def probe_write(folder: str | os.PathLike[str]) -> None:
    """Create and delete a file in ``folder``: the one sure test that output can be written
    there (permissions, read-only mounts, /proc). Raises the ``OSError`` it met."""
    fd, tmp = tempfile.mkstemp(prefix=".fmaudit-probe.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Create ``path`` if needed and check a file can be written in it, before any long work.

    Raises:
        FmauditError: empty path, a file in the way, or no permission / read-only location.
    """
    from fmaudit.errors import FmauditError

    if not str(path).strip():
        raise FmauditError(f"{option}: empty path (name an output folder)")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FmauditError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_write(path)
    except OSError as exc:
        raise FmauditError(f"{option} {path}: cannot write there "
                           f"({exc.strerror or type(exc).__name__})") from None
    return path


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], option: str) -> Iterator[Path]:
    """:func:`writable_dir`, and if the block (or the check) fails, remove again the folders it
    created as long as nothing was written in them: a failed start leaves no empty folder
    that would make the corrected command look like a rerun."""
    folder = Path(path)  # Path("") is ".": writable_dir refuses the empty name itself
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield writable_dir(path, option)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone): keep it and its parents
        raise


class TooLargeError(OSError):
    """A file read with :func:`read_limited` holds more than its limit."""


def read_limited(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path``, refusing more than ``limit`` of them: a small input file named by
    mistake as a huge one, or as a device such as /dev/zero, must not fill the memory.

    Raises:
        TooLargeError: more than ``limit`` bytes. OSError: unreadable.
    """
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"larger than {limit / 2**20:g} MiB")
    return data


def read_json_object(path: str | os.PathLike[str], what: str, fix: str) -> dict[str, Any]:
    """A JSON object from ``path`` (a manifest, a run file).

    Raises:
        FmauditError: the file is unreadable, not valid JSON or not an object (names the file,
            ``what`` it is and the ``fix``).
    """
    from fmaudit.errors import FmauditError

    path = Path(path)
    try:
        text = read_limited(path, 64 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FmauditError(f"{path}: unreadable {what} ({reason}) ({fix})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise FmauditError(f"{path}: {what} is not valid JSON ({exc}) ({fix})") from None
    if not isinstance(data, dict):
        raise FmauditError(f"{path}: {what} is not a JSON object (it holds a "
                           f"{type(data).__name__}) ({fix})")
    return data
