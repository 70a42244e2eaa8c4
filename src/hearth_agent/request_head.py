"""The bounds on a request's head (its request line and headers), which anyone may send.

Whoever reaches the agent's port gets this far without a token, so the head's cost is bounded
before the agent knows who sent it: the whole head must arrive within ``HEAD_DEADLINE_S`` of the
connection (in total: a client trickling a byte now and then does not extend it), in at most
``MAX_HEADERS`` header lines of at most ``MAX_HEADER_LINE_BYTES`` each. That is far below the
standard library's 100 lines of 64 KiB, and far above what the controller sends (a handful of
short headers: a bearer token of at most 512 characters, an event id, an update's digest). The
request line keeps the standard library's 64 KiB: a file's path, URL-encoded, may be long.

Once the head is read, the connection's reads are plain again, under the handler's own socket
timeouts: an event stream, a long poll or an upload may last as long as they allow.
"""

from __future__ import annotations

import http.client
import io
import socket
import time

HEAD_DEADLINE_S = 10.0
MAX_HEADERS = 32
MAX_HEADER_LINE_BYTES = 8 * 1024


class _DeadlineSocketIO(socket.SocketIO):
    """A socket's reads, each given no more time than is left until the deadline (if any)."""

    def __init__(self, sock: socket.socket, *, deadline: float, read_timeout_s: float) -> None:
        super().__init__(sock, "rb")
        self._socket = sock  # SocketIO's own reference is private to it
        self.deadline: float | None = deadline
        self._read_timeout_s = read_timeout_s

    def readinto(self, b: bytearray | memoryview) -> int | None:  # type: ignore[override]
        """Read as the socket does, within what is left of the deadline."""
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the request's head did not arrive in time")
            self._socket.settimeout(min(remaining, self._read_timeout_s))
        return super().readinto(b)

    def end_deadline(self) -> None:
        """Reads are the socket's own again, with the handler's timeout."""
        self.deadline = None
        self._socket.settimeout(self._read_timeout_s)


class RequestReader(io.BufferedReader):
    """A connection's reader that holds its request's head to the bounds above until
    ``head_read``, then reads as a plain buffered socket reader."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        read_timeout_s: float,
        deadline_s: float = HEAD_DEADLINE_S,
    ) -> None:
        self._socket_io = _DeadlineSocketIO(
            sock, deadline=time.monotonic() + deadline_s, read_timeout_s=read_timeout_s
        )
        super().__init__(self._socket_io)
        self._lines = 0  # of the head read so far, the request line first

    def readline(self, size: int | None = -1) -> bytes:
        """A line; within the head, a header line past the limits raises the errors the standard
        library answers with 431 (the request line is its own to bound, at 64 KiB)."""
        if self._socket_io.deadline is None:
            return super().readline(size)
        self._lines += 1
        if self._lines == 1:
            return super().readline(size)
        if self._lines > MAX_HEADERS + 2:  # the request line, the headers, the empty line
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        line = super().readline(MAX_HEADER_LINE_BYTES + 1)
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise http.client.LineTooLong("header line")
        return line

    def head_read(self) -> None:
        """The head is in: lift its bounds, so that a long stream is not cut at the deadline."""
        self._socket_io.end_deadline()
