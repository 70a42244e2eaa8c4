"""An exec's stdin: chunks queued by requests, written to the process in order by one thread."""

from __future__ import annotations

import collections
import contextlib
import os
import select
import threading
from typing import IO

from hearth_agent.errors import StdinBacklogFull, StdinClosed

# How often a writer waiting for the process to read looks whether its exec has ended.
WRITE_POLL_S = 0.25


class StdinFeeder:
    """Writes queued chunks to a process's stdin on its own thread, in order, then closes it.

    ``write`` never blocks on the process: it queues (up to a backlog cap) and returns. The
    thread never blocks either: it writes without blocking and waits for room with ``poll``, so
    ``close`` ends it (and lets go of the pipe and the backlog) even while a process that outlived
    the exec (one that left its session) holds stdin open without reading it.
    """

    def __init__(self, pipe: IO[bytes], *, backlog_bytes: int, name: str) -> None:
        self._pipe = pipe
        # Only this thread writes to it; a terminal's pump reads its own descriptor of the same
        # master, and reads only what poll said is there.
        os.set_blocking(pipe.fileno(), False)
        self._backlog_bytes = backlog_bytes
        self._changed = threading.Condition()
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._eof = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, data: bytes, *, eof: bool = False) -> int:
        """Queue ``data`` (and close stdin after it if ``eof``); return the bytes now queued."""
        with self._changed:
            if self._closed or self._eof:
                raise StdinClosed("stdin is closed")
            if self._queued_bytes + len(data) > self._backlog_bytes:
                raise StdinBacklogFull(
                    f"{self._queued_bytes} bytes of stdin are still waiting for the process to "
                    f"read them (cap {self._backlog_bytes}); retry once it reads"
                )
            if data:
                self._queue.append(data)
                self._queued_bytes += len(data)
            self._eof = eof
            self._changed.notify_all()
            return self._queued_bytes

    def close(self) -> None:
        """Drop whatever is queued and close stdin (the exec ended); idempotent. The thread
        lets go of the pipe within ``WRITE_POLL_S``."""
        with self._changed:
            self._closed = True
            self._queue.clear()
            self._queued_bytes = 0
            self._changed.notify_all()

    def _is_closed(self) -> bool:
        with self._changed:
            return self._closed

    def _run(self) -> None:
        fd = self._pipe.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._eof or self._closed)
                if self._closed or not self._queue:
                    break
                chunk = self._queue[0]
            view = memoryview(chunk)
            try:
                while view and not self._is_closed():
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:  # the process is not reading: wait for room
                        poller.poll(WRITE_POLL_S * 1000)
            except OSError:  # EPIPE: nobody reads stdin any more
                self.close()
                break
            with self._changed:
                if self._queue and self._queue[0] is chunk:
                    self._queue.popleft()
                    self._queued_bytes -= len(chunk)
        with self._changed:
            self._closed = True
        with contextlib.suppress(OSError):
            self._pipe.close()
