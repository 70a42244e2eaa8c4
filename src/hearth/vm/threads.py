"""Blocking host work (``ip``, ``nft``, ``losetup``…) in a worker thread, kept off the event loop.

A thread cannot be interrupted: a caller cancelled while the work runs would otherwise return at
once and leave behind whatever the thread goes on to make. ``finish_in_thread`` lets the work end
first, undoes what it made, and only then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


async def finish_in_thread(
    work: Callable[[], _T], *, undo: Callable[[_T], object] | None = None
) -> _T:
    """``work()`` in a worker thread. When the caller is cancelled meanwhile, the thread still
    runs to its end, ``undo`` (in a thread too) is given what it returned, and the cancellation
    then propagates. ``work`` cleans up after its own failures."""
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        if undo is not None and not running.cancelled() and running.exception() is None:
            await asyncio.to_thread(undo, running.result())
        raise
