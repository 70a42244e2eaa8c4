"""Request bodies read as they arrive, for uploads too large to hold: Content-Length or chunked.

The JSON endpoints read their (small) bodies whole (``Request.read_body``); the file endpoints
open the body as a stream instead (``Request.open_body``) and copy it to disk a chunk at a time.
A body is refused with ``FileTooLarge`` the moment it passes its cap, and with ``BadRequest``
when it breaks off before its end (a short Content-Length body, a chunked body without its last
chunk): a reader that stops early never mistakes a truncated upload for a whole one. A chunked
body's trailer section (header fields after its last chunk, which the agent skips) is bounded as
the request's headers are (``request_head``): past ``MAX_TRAILER_LINES`` lines or
``MAX_TRAILER_BYTES`` in all it is refused with ``TrailersTooLarge`` (431), so that a client
cannot keep a thread reading trailer lines without end.
"""

from __future__ import annotations

import io
import re

from hearth_agent.errors import AgentError, BadRequest, FileTooLarge
from hearth_agent.request_head import MAX_HEADERS

_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?\r?\n")
# A chunk-size line longer than this is not HTTP we speak.
MAX_LINE_BYTES = 4096
# The trailer section: as many lines as a request may have headers, and far fewer bytes (nobody
# sends the agent trailers; the controller sends none), the empty line that ends it included.
MAX_TRAILER_LINES = MAX_HEADERS
MAX_TRAILER_BYTES = 8 * 1024
_EMPTY_LINES = (b"\r\n", b"\n")


class TrailersTooLarge(AgentError, code="trailers_too_large", http_status=431):
    """A chunked body's trailer section has more lines, or more bytes, than the agent reads."""


class RequestBody:
    """One request's body as a binary stream (``read(n)``), at most ``max_bytes`` of it.

    ``length`` is the declared Content-Length, or None for ``Transfer-Encoding: chunked``.
    """

    def __init__(self, source: io.BufferedIOBase, *, length: int | None, max_bytes: int) -> None:
        if length is not None and length > max_bytes:
            raise FileTooLarge(f"a body of {length} bytes exceeds the limit of {max_bytes}")
        self._source = source
        self._length = length
        self._max_bytes = max_bytes
        self._received = 0
        # Chunked: bytes left in the current chunk (0 between chunks).
        self._chunk_left = 0
        self._complete = length == 0

    @property
    def received(self) -> int:
        """How many bytes of the body were read so far."""
        return self._received

    @property
    def complete(self) -> bool:
        """Whether the whole body, framing included, has been read."""
        return self._complete

    def readable(self) -> bool:
        """A body is a readable stream (for ``io`` wrappers and tarfile)."""
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest when negative); ``b""`` once the body has ended."""
        if self._complete or size == 0:
            return b""
        if size < 0:
            return b"".join(iter(lambda: self.read(1024 * 1024), b""))
        parts: list[bytes] = []
        wanted = size
        # As a file's read does: all ``size`` bytes unless the body ends first (tarfile sniffs
        # compression from its first read, which must not come back with a few bytes).
        while wanted > 0 and not self._complete:
            data = self._read_chunked(wanted) if self._length is None else self._read_length(wanted)
            self._received += len(data)
            if self._received > self._max_bytes:
                raise FileTooLarge(f"the body exceeds the limit of {self._max_bytes} bytes")
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts)

    def drain(self) -> int:
        """Read (and drop) whatever is left of the body; how many bytes that was."""
        drained = 0
        while chunk := self.read(1024 * 1024):
            drained += len(chunk)
        return drained

    def _read_length(self, size: int) -> bytes:
        assert self._length is not None
        wanted = min(size, self._length - self._received)
        data = self._read_raw(wanted)
        if self._received + len(data) == self._length:
            self._complete = True
        return data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            self._chunk_left = self._next_chunk_size()
            if self._chunk_left == 0:
                self._read_trailers()
                self._complete = True
                return b""
        data = self._read_raw(min(size, self._chunk_left))
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._line() not in _EMPTY_LINES:
            raise BadRequest("a chunk of the request body does not end with CRLF")
        return data

    def _next_chunk_size(self) -> int:
        matched = _CHUNK_SIZE_LINE.fullmatch(self._line())
        if matched is None:
            raise BadRequest("the request body's chunked framing is malformed")
        return int(matched.group(1), 16)

    def _read_trailers(self) -> None:
        """Skip the trailer section up to the empty line that ends it, within its bounds."""
        size = 0
        for _ in range(MAX_TRAILER_LINES + 1):  # the trailer lines, then the empty line
            # One byte past what is left: a line that reaches it is too large, not cut short.
            line = self._readline(MAX_TRAILER_BYTES - size + 1)
            size += len(line)
            if size > MAX_TRAILER_BYTES:
                break
            if not line.endswith(b"\n"):
                raise BadRequest("the request body ended before the end of its trailers")
            if line in _EMPTY_LINES:
                return
        raise TrailersTooLarge(
            f"the chunked body's trailers exceed {MAX_TRAILER_LINES} lines "
            f"or {MAX_TRAILER_BYTES} bytes"
        )

    def _line(self) -> bytes:
        line = self._readline(MAX_LINE_BYTES)
        if not line.endswith(b"\n"):
            raise BadRequest("the request body ended before its last chunk")
        return line

    def _readline(self, limit: int) -> bytes:
        """A line of at most ``limit`` bytes; without its newline at the end of the body."""
        try:
            return self._source.readline(limit)
        except OSError as exc:
            raise BadRequest("could not read the request body") from exc

    def _read_raw(self, size: int) -> bytes:
        """Up to ``size`` bytes of what is there now (at least one), or BadRequest at EOF."""
        try:
            data = self._source.read1(size)
        except OSError as exc:
            raise BadRequest("could not read the request body") from exc
        if not data:
            raise BadRequest("the request body ended before its declared end")
        return bytes(data)
