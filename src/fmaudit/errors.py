"""Exit codes and the one exception type that means "the user gave us something wrong"."""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3  # a bug in fmaudit, never confused with a failed gate
EXIT_INTERRUPTED = 130


class FmauditError(Exception):
    """Bad input or usage. The CLI prints ``fmaudit: error: <message>`` and exits 2.

    The message must name the file or argument at fault and, where possible, the fix.
    """

    exit_code = EXIT_BAD_INPUT


def bad_input(what: str, problem: str, fix: str | None = None) -> FmauditError:
    """Build a one-line error: ``<what>: <problem> (<fix>)``."""
    msg = f"{what}: {problem}"
    if fix:
        msg += f" ({fix})"
    return FmauditError(msg)
