"""An HTTP response read within a size limit: its whole body, or its server-sent events.

httpx holds a body, or an event stream's line, whole however long it runs, and its timeouts
bound each read, not the whole: a server that never stops sending is read until memory runs
out. These read the raw bytes (no decompression, which could multiply them) and stop with
``ResponseTooLarge`` as soon as the limit is passed, having held at most one network read more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from httpx_sse import ServerSentEvent


class ResponseTooLarge(Exception):
    """A body, or one event of a stream, passed ``limit`` bytes; what it said is dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, ResponseTooLarge past ``limit`` bytes."""
    body = bytearray()  # one buffer: many tiny reads cost no more than one large one
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise ResponseTooLarge(limit)
    return bytes(body)


async def capped_events(response: httpx.Response, limit: int) -> AsyncIterator[ServerSentEvent]:
    """The events of a streamed ``text/event-stream`` response as they come, each (its lines
    up to the blank one that ends it) at most ``limit`` bytes, else ResponseTooLarge.

    Lines end with LF or CRLF (a lone CR, which the format also allows, stays in the line);
    events without data (a keepalive) are not handed out, as the format says.
    """
    fields = _EventFields()
    line = bytearray()  # the line not ended yet; only each new read is searched for its end
    async for chunk in response.aiter_raw():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line += chunk[start:end]
            start = end + 1
            fields.size += len(line) + 1
            if fields.size > limit:
                raise ResponseTooLarge(limit)
            event = fields.take(line.removesuffix(b"\r").decode("utf-8", errors="replace"))
            line.clear()
            if event is not None:
                yield event
        line += chunk[start:]
        if fields.size + len(line) > limit:
            raise ResponseTooLarge(limit)


class _EventFields:
    """The fields of the event being read, and what its lines have taken so far."""

    def __init__(self) -> None:
        self.size = 0
        self.last_id = ""  # kept from one event to the next, as the format says
        self._event = ""
        self._data: list[str] = []

    def take(self, line: str) -> ServerSentEvent | None:
        """Take one line; the event it completes (a blank line), if it has data."""
        if not line:
            event = None
            if self._data:
                event = ServerSentEvent(self._event, "\n".join(self._data), self.last_id)
            self.size, self._event, self._data = 0, "", []
            return event
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None  # a comment (no name) or a field this client does not use
