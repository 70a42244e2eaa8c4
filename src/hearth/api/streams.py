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
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse

from hearth.store import ApiKeyRecord, Store

EVENT_STREAM = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# How often a stream a key opened looks again whether the key was revoked meanwhile, quiet or not.
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
    each_chunk: bool = False,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """The response streaming ``chunks`` (SSE bytes) while ``key`` holds, with keepalives; the
    key is looked at every ``KEY_RECHECK_S``, quiet or not, and before every chunk when
    ``each_chunk``."""

    async def key_holds() -> bool:
        return not (await store.api_keys.get(key.id)).is_revoked

    return StreamingResponse(
        guarded(chunks, key_holds, each_chunk=each_chunk),
        media_type=EVENT_STREAM,
        headers={**STREAM_HEADERS, **(headers or {})},
    )


async def guarded(
    chunks: AsyncIterator[bytes],
    key_holds: Callable[[], Awaitable[bool]],
    *,
    each_chunk: bool = False,
    recheck_s: float | None = None,
    keepalive_s: float | None = None,
) -> AsyncIterator[bytes]:
    """``chunks``, with ``KEEPALIVE`` after each ``keepalive_s`` (default ``KEEPALIVE_S``) that
    brought none, ended once ``key_holds()`` is false: asked every ``recheck_s`` (default
    ``KEY_RECHECK_S``) whether chunks come or not, and before every chunk when ``each_chunk``."""
    recheck_s = KEY_RECHECK_S if recheck_s is None else recheck_s
    keepalive_s = KEEPALIVE_S if keepalive_s is None else keepalive_s
    iterator = aiter(chunks)
    pending: asyncio.Future[bytes] | None = None
    looked = quiet_since = time.monotonic()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            wake_at = min(looked + recheck_s, quiet_since + keepalive_s)
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, wake_at - time.monotonic()))
            if (done and each_chunk) or time.monotonic() - looked >= recheck_s:
                if not await key_holds():
                    return
                looked = time.monotonic()
            if not done:
                if time.monotonic() - quiet_since >= keepalive_s:
                    yield KEEPALIVE
                    quiet_since = time.monotonic()
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
            quiet_since = time.monotonic()
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
