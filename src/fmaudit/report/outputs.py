"""Output files given on the command line (``gate --junit FILE``).

Checked before any work (:func:`output_file`, which creates nothing) and written so that an OS
error becomes an :class:`FmauditError` naming the option and the path (:func:`write_output`),
never a traceback or a half-written file. Output folders: :func:`fmaudit.io.writable_dir`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fmaudit.errors import FmauditError
from fmaudit.io import atomic_write_bytes, probe_write


def _what(option: str | None, path: str | os.PathLike[str]) -> str:
    return f"{option} {path}" if option else str(path)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _existing_ancestor(path: Path, option: str | None, shown: str) -> Path:
    """The nearest ancestor of ``path`` that exists; an error if it (or one below) is a file."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise FmauditError(f"{_what(option, shown)}: {parent} is not a folder (choose a "
                                   "path whose folders are folders)")
            return parent
        if parent.is_symlink():  # a dangling link: mkdir through it would fail
            raise FmauditError(f"{_what(option, shown)}: {parent} is a broken link")
    return Path(".")


def _probe(folder: Path, option: str | None, shown: str) -> None:
    """Create and delete a file in ``folder``: the one sure test that the output can be written."""
    try:
        probe_write(folder)
    except OSError as exc:
        raise FmauditError(f"{_what(option, shown)}: cannot write in {folder} ({_reason(exc)}; "
                           "choose a writable location)") from None


def output_file(raw: str | os.PathLike[str], option: str, example: str = "out.xml") -> Path:
    """Check an output file path before any work; return it as a Path.

    Rejects an empty path, an existing folder, a parent that is a file, and a location where no
    file can be created (read-only, /proc, no permission).
    """
    text = os.fspath(raw)
    if not text.strip():
        raise FmauditError(f"{option}: empty path (name a file, e.g. {option} {example})")
    path = Path(text)
    try:
        if path.is_dir():
            raise FmauditError(f"{_what(option, text)}: is a folder (name a file inside it)")
        if path.exists() and not path.is_file():  # a device or a pipe: written through
            if not os.access(path, os.W_OK):
                raise FmauditError(f"{_what(option, text)}: not writable")
            return path
        _probe(_existing_ancestor(path.parent, option, text), option, text)
    except OSError as exc:  # stat itself failed: no permission, a name too long
        raise FmauditError(f"{_what(option, text)}: cannot use this path "
                           f"({_reason(exc)})") from None
    return path


def refuse_inputs(path: Path, option: str, inputs: dict[str, Path | None]) -> None:
    """Refuse an output ``path`` that is one of the files the command reads (``inputs``: what
    each is, e.g. ``{"the report": ...}``): writing it would destroy that input.

    Raises:
        FmauditError: ``path`` is (or links to) one of ``inputs``.
    """
    for what, source in inputs.items():
        if source is None or not path.exists():
            continue
        with contextlib.suppress(OSError):
            if os.path.samefile(path, source):
                raise FmauditError(f"{_what(option, os.fspath(path))}: is {what} this command "
                                   "reads; writing it would destroy it (name another file)")


def write_output(path: str | os.PathLike[str], data: bytes, option: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically (a device or pipe is written through, see
    :func:`fmaudit.io.atomic_path`); an OS error names ``option`` and the path."""
    path = Path(path)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise FmauditError(f"{_what(option, path)}: cannot write ({_reason(exc)}; choose a "
                           "writable location)") from None
