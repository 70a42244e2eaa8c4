"""The API's event streams (``text/event-stream``): a command's, a run's, the event log's.

Each goes out through ``event_stream``: it ends when the key that opened it is revoked (a
revoked key stops authenticating at once, its open streams included), and it carries an SSE
comment line every ``KEEPALIVE_S`` while nothing else comes, so a proxy that cuts idle
connections leaves a quiet command's stream alone, and a client can tell a dead connection
from a quiet one (the SDK's read timeout is a few of these).

It also ends once the server stops (``stop_streams``): a stream follows something that need not
end (the event log, a long command), and a stopping server waits for its connections, so an open
stream would hold it forever. A stream that ends before its last event is a break to a client
(the SDK resumes it after ``Last-Event-ID``), never the end of what it follows.

A file download's binary body goes through ``guarded`` too (``binary``): no keepalive, and its
key revoked breaks it (short of its length, a chunked tar without its last chunk), never an end
a client could take for the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from hearth.errors import Unauthorized
from hearth.store import ApiKeyRecord, Store
from hearth.store.outage import is_outage

EVENT_STREAM = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# How often a stream a key opened looks again whether the key was revoked meanwhile, quiet or not.
KEY_RECHECK_S = 1.0
# A comment line after this long without an event. A line, not a block: the blank line that
# would close it makes some clients (httpx-sse, and so the vm tests' readers) hand out an empty
# event carrying the last id, which their callers then fail to parse.
KEEPALIVE_S = 15.0
KEEPALIVE = b": keepalive\n"
# Whether the key a stream was opened with still holds (asked again and again while it runs).
KeyHolds = Callable[[], Awaitable[bool]]
# Where an app keeps the signal that ends its streams.
_STOPPING = "streams_stopping"


def streams_stopping(app: Starlette) -> asyncio.Event:
    """The signal that ends every stream ``app`` serves, set by ``stop_streams`` (the app's
    one, made on first use)."""
    stopping: asyncio.Event | None = getattr(app.state, _STOPPING, None)
    if stopping is None:
        stopping = asyncio.Event()
        setattr(app.state, _STOPPING, stopping)
    return stopping


def stop_streams(app: Starlette) -> None:
    """End every stream ``app`` serves, open or opened from now on: its server is stopping, and
    waits for its connections before the app's lifespan may end."""
    streams_stopping(app).set()


def event_stream(
    store: Store,
    key: ApiKeyRecord,
    chunks: AsyncIterator[bytes],
    *,
    each_chunk: bool = False,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """The response streaming ``chunks`` (SSE bytes) while ``key`` holds and the server runs,
    with keepalives; the key is looked at every ``KEY_RECHECK_S``, quiet or not, and before
    every chunk when ``each_chunk``."""
    return _GuardedStream(
        chunks,
        key_holds(store, key),
        each_chunk=each_chunk,
        headers={**STREAM_HEADERS, **(headers or {})},
    )


async def key_revoked(store: Store, key_id: str) -> bool:
    """Whether API key ``key_id`` was revoked (keys are revoked, never deleted)."""
    return (await store.api_keys.get(key_id)).is_revoked


def key_holds(store: Store, key: ApiKeyRecord) -> KeyHolds:
    """The look ``guarded`` takes at ``key``: whether it is still not revoked. A store that
    cannot be reached (an outage: a failover, a restart) says nothing against it: the key is
    looked at again at the next round, and a long download is not broken by a blip."""

    async def holds() -> bool:
        try:
            return not await key_revoked(store, key.id)
        except Exception as exc:
            if is_outage(exc):
                return True
            raise

    return holds


class _GuardedStream(StreamingResponse):
    """``guarded(chunks, …)`` as an event stream; the app whose stopping also ends it is known
    only once the response is sent."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        key_holds: KeyHolds,
        *,
        each_chunk: bool,
        headers: dict[str, str],
    ) -> None:
        super().__init__(chunks, media_type=EVENT_STREAM, headers=headers)
        self._chunks = chunks
        self._key_holds = key_holds
        self._each_chunk = each_chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.body_iterator = guarded(
            self._chunks,
            self._key_holds,
            each_chunk=self._each_chunk,
            stopping=streams_stopping(scope["app"]),
        )
        await super().__call__(scope, receive, send)


async def guarded(
    chunks: AsyncIterator[bytes],
    key_holds: KeyHolds,
    *,
    each_chunk: bool = False,
    recheck_s: float | None = None,
    keepalive_s: float | None = None,
    stopping: asyncio.Event | None = None,
    binary: bool = False,
) -> AsyncIterator[bytes]:
    """``chunks``, with ``KEEPALIVE`` after each ``keepalive_s`` (default ``KEEPALIVE_S``) that
    brought none, ended once ``key_holds()`` is false: asked every ``recheck_s`` (default
    ``KEY_RECHECK_S``) whether chunks come or not, and before every chunk when ``each_chunk``;
    ended at once when ``stopping`` is set (a chunk not yet sent is left to the resume). A
    ``binary`` body gets no keepalive, and a key that no longer holds breaks it: Unauthorized
    is raised, which the server answers by cutting the body off."""
    recheck_s = KEY_RECHECK_S if recheck_s is None else recheck_s
    keepalive_s = KEEPALIVE_S if keepalive_s is None else keepalive_s
    keepalive_s = math.inf if binary else keepalive_s
    iterator = aiter(chunks)
    pending: asyncio.Future[bytes] | None = None
    stopping = asyncio.Event() if stopping is None else stopping
    stopped = asyncio.ensure_future(stopping.wait())
    looked = quiet_since = time.monotonic()
    try:
        while not stopping.is_set():
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            wake_at = min(looked + recheck_s, quiet_since + keepalive_s)
            timeout = max(0.0, wake_at - time.monotonic())
            waiting: list[asyncio.Future[Any]] = [pending, stopped]
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if stopping.is_set():
                return
            if (done and each_chunk) or time.monotonic() - looked >= recheck_s:
                if not await key_holds():
                    if binary:
                        raise Unauthorized("the key this body was sent for was revoked")
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
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
