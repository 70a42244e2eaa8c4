"""SharedTasks: one task per key that concurrent callers join instead of starting their own.

A destroy or an automatic resume of one VM asked for by several requests at once runs once;
each caller awaits the same result (or exception). A caller that gives up (a cancelled
request) leaves the task running for the others, and its outcome is always retrieved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SharedTasks(Generic[T]):
    """The tasks under way, by key."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def running(self, key: str) -> bool:
        """Whether a task for ``key`` is under way."""
        return key in self._tasks

    async def join(self, key: str, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of the task for ``key``, started with ``start()`` unless one runs."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(start())
            self._tasks[key] = task
            task.add_done_callback(lambda _t: self._tasks.pop(key, None))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        return await asyncio.shield(task)

    async def wait(self) -> None:
        """Until every task under way (and any they start meanwhile) has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
