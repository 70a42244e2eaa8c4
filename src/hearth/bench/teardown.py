"""Teardown for benchmarks: cleanups registered by whoever makes a resource, run once, LIFO."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import TracebackType

from hearth.bench.errors import BenchError
from hearth.logging import get_logger

_log = get_logger("bench.teardown")


class Teardown:
    """Runs every registered cleanup once, newest first, and collects their errors.

    Use as ``async with Teardown() as teardown``. When the body failed, cleanup errors are
    logged and the body's error propagates; otherwise they are raised together as BenchError.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        """Register ``step`` (sync, or returning an awaitable) to run at teardown."""
        self._steps.append((what, step))

    async def run(self) -> list[str]:
        """Run the steps registered so far, newest first; returns what failed and why."""
        errors: list[str] = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                result = step()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # every step must run, whatever the previous one raised
                errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return errors

    async def __aenter__(self) -> Teardown:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        errors = await self.run()
        if not errors:
            return
        if exc is not None:
            _log.warning("teardown_errors", errors=errors)
            return
        raise BenchError("cleanup failed: " + "; ".join(errors))
