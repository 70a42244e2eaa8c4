"""JSON-lines logger: one object per line on stderr, never carrying tokens or credentials."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from enum import StrEnum
from typing import TextIO


class Level(StrEnum):
    """Severity of a log line, ordered from least to most severe."""

    DEBUG = "debug"  # noisy detail, off unless asked for
    INFO = "info"  # normal lifecycle and per-request lines
    WARNING = "warning"  # something was repaired or is unsafe on purpose
    ERROR = "error"  # a request or the agent failed


_RANK = {Level.DEBUG: 10, Level.INFO: 20, Level.WARNING: 30, Level.ERROR: 40}


class JsonLogger:
    """Writes ``{"ts", "level", "event", ...fields}`` lines; safe to share between threads.

    Callers pass only fields that are safe to log: never headers, bodies, tokens or credential
    contents. Values that are not JSON types are logged through ``str``.
    """

    def __init__(self, *, stream: TextIO | None = None, level: Level = Level.INFO) -> None:
        self._stream = stream
        self._threshold = _RANK[level]
        self._lock = threading.Lock()

    def debug(self, event: str, **fields: object) -> None:
        """Log a debug line."""
        self._emit(Level.DEBUG, event, fields)

    def info(self, event: str, **fields: object) -> None:
        """Log an info line."""
        self._emit(Level.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        """Log a warning line."""
        self._emit(Level.WARNING, event, fields)

    def error(self, event: str, **fields: object) -> None:
        """Log an error line."""
        self._emit(Level.ERROR, event, fields)

    def _emit(self, level: Level, event: str, fields: dict[str, object]) -> None:
        if _RANK[level] < self._threshold:
            return
        record: dict[str, object] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level.value,
            "event": event,
        }
        record.update(fields)
        line = json.dumps(record, default=str, ensure_ascii=False)
        # Resolved per call so that a replaced sys.stderr (tests, daemonizing) is honoured.
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                # Logging must never take the agent down (closed or broken stderr).
                pass
