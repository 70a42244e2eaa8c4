"""Running an async context (a controller, a server) on an event loop of its own thread, so that
synchronous tests (schemathesis, hypothesis) can call it over HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def in_background_loop(
    enter: Callable[[], AbstractAsyncContextManager[T]], *, timeout_s: float
) -> Iterator[T]:
    """Enter ``enter()`` on a new thread's event loop and yield its value; the block's end exits
    it there. What the loop raised, while entering or exiting, is raised here."""
    ready, stop = threading.Event(), threading.Event()
    holder: list[T] = []
    errors: list[BaseException] = []

    async def run() -> None:
        async with enter() as value:
            holder.append(value)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(timeout_s), f"the background context did not start in {timeout_s} s"
    if errors:
        raise errors[0]
    try:
        yield holder[0]
    finally:
        stop.set()
        thread.join(timeout_s)
    assert not errors, errors
