"""Teardown: cleanups registered by whoever makes a resource, run once, newest first, every one
of them whatever the others raise (the composition root, benchmarks and tests use it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from hearth.closing import Closing
from hearth.errors import HearthError, TeardownError
from hearth.logging import get_logger

_log = get_logger("teardown")
T = TypeVar("T")


class Teardown(Closing):
    """Runs every registered cleanup once, newest first, and collects their errors.

    Use as ``async with Teardown() as teardown``. When the body failed, cleanup errors are
    logged and the body's error propagates; otherwise they are raised together as ``error``
    (TeardownError unless the owner names its own).
    """

    def __init__(self, *, error: type[HearthError] = TeardownError) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._error = error

    def push(self, what: str, step: Callable[[], object]) -> None:
        """Register ``step`` (sync, or returning an awaitable) to run at teardown."""
        self._steps.append((what, step))

    async def enter(self, manager: AbstractAsyncContextManager[T], what: str = "") -> T:
        """Enter ``manager`` now and leave it at teardown (in its place in the order)."""
        value = await manager.__aenter__()
        self.push(
            what or f"leave {type(manager).__name__}", lambda: manager.__aexit__(None, None, None)
        )
        return value

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

    async def close(self) -> None:
        """Run every step left; TeardownError (or the owner's class) naming those that failed."""
        errors = await self.run()
        if errors:
            raise self._error("cleanup failed: " + "; ".join(errors))

    async def leave(self, exc: BaseException | None) -> None:
        """After a failed body only log the cleanup errors: the body's error is the one to see."""
        if exc is None:
            await self.close()
            return
        errors = await self.run()
        if errors:
            _log.warning("teardown_errors", errors=errors)
