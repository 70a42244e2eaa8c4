"""What every command module shares: consoles, settings, error exit."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.logging import configure_logging
from hearth.sdk import HearthSdkError

# Piped output (scripts, tests) gets wide lines rather than Rich's default 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


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


# A command or run started in the VM, but how it ended was not seen (its stream, or the API,
# was lost): not "could not start" (125), which a wrapper may take as safe to try again.
EXIT_LOST = 255


@contextmanager
def ending_on_errors(*, code: int = 1) -> Iterator[None]:
    """End the command with exit status ``code`` and the code and message of an error of
    ours or of the SDK's raised inside (an SDK error without a code shows ``error``)."""
    try:
        yield
    except HearthError as exc:
        fail(exc, code=code)
    except HearthSdkError as exc:
        message = getattr(exc, "message", None) or str(exc)
        fail_sdk(str(getattr(exc, "code", "error")), message, code=code)
