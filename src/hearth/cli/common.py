"""What every command module shares: consoles, settings, error exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.logging import configure_logging
from hearth.sdk import HearthConnectionError, HearthSdkError

# Piped output (scripts, tests) gets wide lines rather than Rich's default 80 columns. What the
# commands print holds names of files, paths and messages: no ``:name:`` in them becomes an
# emoji, and each one is escaped (``escape``, ``Text``) where markup is printed around it.
console = Console(width=None if sys.stdout.isatty() else 200, emoji=False)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200, emoji=False)


def load_settings() -> Settings:
    """Settings from the environment, with logging configured; exits on a bad setting."""
    try:
        settings = Settings.from_env()
    except HearthError as exc:
        fail(exc)
    configure_logging(json=settings.log_json)
    return settings


def fail(exc: HearthError, *, code: int = 1) -> NoReturn:
    """Print the error's code and message (never a traceback) and exit."""
    fail_sdk(exc.code, exc.message, code=code)


def fail_sdk(error_code: str, message: str, *, code: int = 1) -> NoReturn:
    """Print an error's code and message (the SDK's errors too) and exit with ``code``."""
    err_console.print(f"[red]error[/red] ({escape(error_code)}): {escape(message)}")
    raise typer.Exit(code)


# A command or run in the VM did not start (refused, or the API never reached): a wrapper may
# take it as safe to try again.
EXIT_NOT_STARTED = 125
# A command or run started in the VM, or may have (the request went out, its answer was lost),
# but how it ended was not seen: not "not started", which a wrapper may retry.
EXIT_LOST = 255
# Stopped in the VM: Ctrl-C here (which kills or cancels it there), or a cancel; as a shell
# reports SIGINT.
EXIT_CANCELLED = 130
# A command or run ran out of its time (as coreutils' ``timeout`` exits).
EXIT_TIMEOUT = 124
# The reader of this command's output went away (``… | head``): as a shell reports a writer
# that SIGPIPE ended (128 + 13).
EXIT_OUTPUT_CLOSED = 141


def output_closed() -> int:
    """Stdout's reader went away (a BrokenPipeError): stdout pointed at /dev/null, so the
    interpreter's last flush of what is left in its buffer does not raise again (Python's own
    recipe for SIGPIPE); the status to exit with."""
    try:
        stdout = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (stdout captured in process): nothing to flush
        return EXIT_OUTPUT_CLOSED
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stdout)
    finally:
        os.close(devnull)
    return EXIT_OUTPUT_CLOSED


def output_closed_stopping(stop: Callable[[], object] | None) -> int:
    """Stdout's reader went away (``hearth exec … | head``): ``output_closed``, then ``stop``
    what runs in the VM (the command killed, the run cancelled), as Ctrl-C would, an error of
    it ending with ``EXIT_LOST``; the status to exit with. None: nothing there to stop (it had
    ended, or was not seen to start)."""
    status = output_closed()
    if stop is not None:
        with ending_on_errors(code=EXIT_LOST):
            stop()
    return status


# Where a command or a run starts in the VM.
CwdOption = Annotated[str | None, typer.Option(help="directory in the VM (default: workspace)")]


def plain(value: object) -> Text:
    """``value`` to print (or put in a table) as it is: a name with ``[…]`` in it is not
    markup."""
    return Text(str(value))


@contextmanager
def ending_on_errors(*, code: int = 1, unknown: int | None = None) -> Iterator[None]:
    """End the command with exit status ``code`` and the code and message of an error of
    ours or of the SDK's raised inside (an SDK error without a code shows ``error``); with
    ``unknown``, that status instead for an SDK connection error that leaves open whether the
    request took effect (any but ``unreachable``)."""
    try:
        yield
    except HearthError as exc:
        fail(exc, code=code)
    except HearthSdkError as exc:
        message = getattr(exc, "message", None) or str(exc)
        error_code = str(getattr(exc, "code", "error"))
        lost = isinstance(exc, HearthConnectionError) and error_code != "unreachable"
        fail_sdk(error_code, message, code=unknown if lost and unknown is not None else code)
