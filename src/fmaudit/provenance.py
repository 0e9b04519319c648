"""Where a result came from: tool and library versions, git commit, time, command line."""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from fmaudit import __version__


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The fmaudit source tree's commit, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def tool_info() -> dict:
    return {
        "name": "fmaudit",
        "version": __version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "huggingface_hub": _version("huggingface-hub"),
        "accelerate": _version("accelerate"),
        "tokenizers": _version("tokenizers"),
    }


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def command_line(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["fmaudit", *args])
