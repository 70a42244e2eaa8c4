"""The API's event streams (``text/event-stream``): a command's, a run's, the event log's.

Each goes out through ``event_stream``: it ends when the key that opened it is revoked (a
revoked key stops authenticating at once, its open streams included), and it carries an SSE
comment line every ``KEEPALIVE_S`` while nothing else comes, so a proxy that cuts idle
connections leaves a quiet command's stream alone, and a client can tell a dead connection
from a quiet one (the SDK's read timeout is a few of these).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi.responses import StreamingResponse

from hearth.store import ApiKeyRecord, Store

T = TypeVar("T")
EVENT_STREAM = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# How often a stream a key opened looks again whether the key was revoked meanwhile.
KEY_RECHECK_S = 1.0
# A comment line after this long without an event. A line, not a block: the blank line that
# would close it makes some clients (httpx-sse, and so the vm tests' readers) hand out an empty
# event carrying the last id, which their callers then fail to parse.
KEEPALIVE_S = 15.0
KEEPALIVE = b": keepalive\n"


def event_stream(
    store: Store,
    key: ApiKeyRecord,
    chunks: AsyncIterator[bytes],
    *,
    key_every_s: float = KEY_RECHECK_S,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """The response streaming ``chunks`` (SSE bytes) while ``key`` holds, with keepalives."""
    return StreamingResponse(
        with_keepalive(while_key_valid(store, key.id, chunks, every_s=key_every_s)),
        media_type=EVENT_STREAM,
        headers={**STREAM_HEADERS, **(headers or {})},
    )


async def while_key_valid(
    store: Store, key_id: str, items: AsyncIterator[T], *, every_s: float = KEY_RECHECK_S
) -> AsyncIterator[T]:
    """``items``, ended when the key ``key_id`` is revoked; it is looked up before an item once
    ``every_s`` passed since the last look (0: before every item)."""
    looked = time.monotonic()
    try:
        async for item in items:
            if time.monotonic() - looked >= every_s:
                if (await store.api_keys.get(key_id)).is_revoked:
                    return
                looked = time.monotonic()
            yield item
    finally:
        await _close(items)


async def with_keepalive(
    chunks: AsyncIterator[bytes], *, every_s: float | None = None
) -> AsyncIterator[bytes]:
    """``chunks``, and ``KEEPALIVE`` after each ``every_s`` (default ``KEEPALIVE_S``) that
    brought none."""
    every_s = KEEPALIVE_S if every_s is None else every_s
    iterator = aiter(chunks)
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield KEEPALIVE
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await _close(chunks)


async def _close(items: AsyncIterator[object]) -> None:
    """End the stream ``items`` reads, if it is a generator (its source goes with it)."""
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
