"""The ``fmaudit`` command line.

This module only registers commands. Each command lives in its own module, imports torch and
transformers inside its function (so ``fmaudit --help`` is instant), calls a function that returns
data, and prints it. Errors are mapped to exit codes here, in one place:

* 0 ok, 1 a gate check failed, 2 bad input or usage (one line, no traceback unless ``--debug``),
  3 an internal error (a bug: please report it with the ``--debug`` traceback), 130 interrupted.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading
import traceback
from typing import Any

import click

from fmaudit import __version__
from fmaudit.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, FmauditError

# command name -> "module:attribute"; modules are imported only when the command runs.
COMMANDS: dict[str, str] = {
    "corpus": "fmaudit.cli.corpus_cmd:corpus",
    "train": "fmaudit.cli.train_cmd:train",
    "report": "fmaudit.cli.report_cmd:report",
    "render": "fmaudit.cli.render_cmd:render",
    "gate": "fmaudit.cli.gate_cmd:gate",
    "demo": "fmaudit.cli.demo_cmd:demo",
}

_HELP = {
    "corpus": "Model-free statistics of a FASTA or text corpus.",
    "train": "Train a matched seed ensemble (only the init seed differs).",
    "report": "Audit a checkpoint family: entropy, disagreement, embeddings, Fisher.",
    "render": "Re-render report.html and report.md from a report.json.",
    "gate": "Check a report.json against a policy: exit 0 pass, 1 fail.",
    "demo": "Train tiny DNA and text ensembles on the bundled corpora and audit them.",
}


def _available() -> dict[str, str]:
    """Commands whose module exists (a command appears only when it is implemented)."""
    found = {}
    for name, target in COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            found[name] = target
    return found


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _available().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fmaudit")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or status lines.")
def cli(debug: bool, quiet: bool) -> None:
    """Audit genomic foundation models and their text counterparts."""
    from fmaudit import progress

    progress.set_quiet(quiet)
    if debug:
        os.environ["FMAUDIT_DEBUG"] = "1"


def _debug() -> bool:
    return "--debug" in sys.argv[1:] or bool(os.environ.get("FMAUDIT_DEBUG"))


def one_line(message: str) -> str:
    """A message with its line breaks (libraries' multi-line errors) folded into one line."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _usage_message(exc: click.ClickException) -> str:
    message = one_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _on_interrupt(signum: int, frame: Any) -> None:
    from fmaudit import progress

    progress.interrupted = True  # outlives a KeyboardInterrupt that a __del__ swallows
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn exceptions into exit codes."""
    from fmaudit import progress

    progress.interrupted = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _on_interrupt)
    try:
        _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(argv: list[str] | None) -> None:
    from fmaudit import progress

    try:
        rv = cli.main(args=argv, prog_name="fmaudit", standalone_mode=False)
        progress.raise_if_interrupted()  # a Ctrl-C that a finaliser swallowed near the end
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click's message on one line, exit 2
        print(f"fmaudit: error: {_usage_message(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        print("fmaudit: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        print("fmaudit: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except FmauditError as exc:
        if _debug():  # the traceback, but the same exit code: 1 would read as "gate failed"
            traceback.print_exc()
        print(f"fmaudit: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:
        if _debug():
            traceback.print_exc()
            sys.exit(EXIT_INTERNAL)
        print(f"fmaudit: internal error: {type(exc).__name__}: {one_line(str(exc))} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)
