"""Progress of long operations: a Rich display on a terminal, structured log events otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console
from rich.text import Text

from hearth.logging import get_logger


class Progress(Protocol):
    """Reports the phases of a long operation."""

    def phase(self, name: str, detail: str = "") -> AbstractContextManager[None]:
        """Context manager around one phase; reports its start, end and duration."""
        ...

    def note(self, message: str) -> None:
        """A line of information that is not a phase."""
        ...


class RichProgress:
    """A spinner per phase and a ticked line with its duration, for terminals."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)

    @contextmanager
    def _phase(self, name: str, detail: str) -> Iterator[None]:
        started = time.monotonic()
        label = f"{name} {detail}".strip()
        try:
            with self._console.status(Text.assemble((label, "bold"), " …")):
                yield
        except BaseException:
            self._console.print(self._ended("✗", "red", label, started))
            raise
        self._console.print(self._ended("✓", "green", label, started))

    @staticmethod
    def _ended(mark: str, style: str, label: str, started: float) -> Text:
        """The line a phase leaves: its mark, its label as it is (not markup), its duration."""
        return Text.assemble((mark, style), f" {label} ({time.monotonic() - started:.1f} s)")

    def phase(self, name: str, detail: str = "") -> AbstractContextManager[None]:
        """Show a spinner while the phase runs, then a ticked line with its duration."""
        return self._phase(name, detail)

    def note(self, message: str) -> None:
        """Print a dim line."""
        self._console.print(Text(message, style="dim"))


class LogProgress:
    """Phases as structured log events (``phase_started`` / ``phase_done`` / ``phase_failed``)."""

    def __init__(self, component: str = "progress") -> None:
        self._log = get_logger(component)

    @contextmanager
    def _phase(self, name: str, detail: str) -> Iterator[None]:
        started = time.monotonic()
        self._log.info("phase_started", phase=name, detail=detail)
        try:
            yield
        except BaseException as exc:
            self._log.warning(
                "phase_failed",
                phase=name,
                duration_s=round(time.monotonic() - started, 3),
                error=type(exc).__name__,
            )
            raise
        self._log.info("phase_done", phase=name, duration_s=round(time.monotonic() - started, 3))

    def phase(self, name: str, detail: str = "") -> AbstractContextManager[None]:
        """Log the phase's start and its end with the duration."""
        return self._phase(name, detail)

    def note(self, message: str) -> None:
        """Log the message as an event."""
        self._log.info("note", message=message)


def default_progress(component: str) -> Progress:
    """Rich progress when stderr is a terminal, log events otherwise."""
    return RichProgress() if sys.stderr.isatty() else LogProgress(component)
