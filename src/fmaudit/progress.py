"""Progress bars on stderr, silent when stderr is not a terminal or ``--quiet`` was given."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

_quiet = False
# Set by the CLI's SIGINT handler. A KeyboardInterrupt raised while Python runs a __del__ (a
# library's finaliser, during garbage collection) is printed and dropped; the flag is not, so
# the next progress step stops the run and the exit code still says "interrupted".
interrupted = False


def raise_if_interrupted() -> None:
    """Re-raise an interrupt that was swallowed (see ``interrupted``)."""
    if interrupted:
        raise KeyboardInterrupt


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    if _quiet or os.environ.get("FMAUDIT_QUIET"):
        return False
    return sys.stderr.isatty()


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
        unit: str = "it") -> Any:
    """A tqdm bar on stderr (disabled when not interactive); every ``update`` first re-raises
    an interrupt that was swallowed (:func:`raise_if_interrupted`)."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            raise_if_interrupted()
            return super().update(n)

    return _Bar(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not enabled(), dynamic_ncols=True, leave=False)


def info(message: str) -> None:
    """A status line on stderr (suppressed by --quiet)."""
    if not (_quiet or os.environ.get("FMAUDIT_QUIET")):
        print(message, file=sys.stderr)


def warn(message: str) -> None:
    """A warning on stderr; always shown."""
    print(f"fmaudit: warning: {message}", file=sys.stderr)


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's own bars when ours are off."""
    if enabled():
        return
    try:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        disable_progress_bars()
    except ImportError:  # pragma: no cover - both are dependencies
        pass
