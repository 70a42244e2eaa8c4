"""How an exec's output gets into its event log: the pump's pace, and when it lets go.

One pump thread per exec reads its output into the exec's ``EventLog``: its two pipes
(``pump_pipes``) or its terminal (``exec_pty.Pty.pump``). While the log is full the pump waits
for room (``EventLog.wait_for_room``), so the process blocks on write instead of output being
lost.

When the leader ends, the exec kills what it left in its group and session; output still open
after that belongs to a process that made itself a session of its own (``setsid``). ``Drain``
bounds how long the pump reads on: ``DRAIN_GRACE_S`` of reading after the leader ended, time
held back by a slow reader not counted, however much still comes. The exit event then follows.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import IO

from hearth_agent.exec_events import EventLog, EventType, OutputDecoder

READ_CHUNK_BYTES = 64 * 1024  # the most a pump reads at once
PUMP_POLL_S = 0.5  # how often an idle pump looks up (the leader ended, a discard)
DRAIN_GRACE_S = 2.0  # how long output is read after the leader ended (see the docstring)


class Drain:
    """When a pump stops reading: the exec was discarded, or the grace after its leader ended
    is used up."""

    def __init__(self, *, leader_ended: threading.Event, discarded: threading.Event) -> None:
        self._leader_ended = leader_ended
        self._discarded = discarded
        self._deadline: float | None = None

    def over(self) -> bool:
        """Whether to stop reading now."""
        if self._discarded.is_set():
            return True
        if not self._leader_ended.is_set():
            return False
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + DRAIN_GRACE_S
        return now >= self._deadline

    def wait_for_room(self, log: EventLog) -> bool:
        """Wait (up to ``PUMP_POLL_S``) for room in ``log``; the wait does not use up the grace."""
        started = time.monotonic()
        if log.wait_for_room(PUMP_POLL_S):
            return True
        if self._deadline is not None:
            self._deadline += time.monotonic() - started
        return False


def pump_pipes(pipes: dict[EventType, IO[bytes]], log: EventLog, drain: Drain) -> None:
    """Read ``pipes`` (stdout and stderr) into ``log`` until both end or ``drain`` is over,
    then close them."""
    streams = {pipe.fileno(): (event_type, pipe) for event_type, pipe in pipes.items()}
    decoders = {fd: OutputDecoder() for fd in streams}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    while streams and not drain.over():
        if not drain.wait_for_room(log):
            continue
        for fd, _ in poller.poll(PUMP_POLL_S * 1000):
            event_type, pipe = streams[fd]
            chunk = os.read(fd, READ_CHUNK_BYTES)
            payload = decoders[fd].decode(chunk) if chunk else decoders[fd].flush()
            if payload is not None:
                log.append(event_type, payload)
            if not chunk:
                poller.unregister(fd)
                pipe.close()
                del streams[fd]
    for fd, (event_type, pipe) in streams.items():
        payload = decoders[fd].flush()
        if payload is not None:
            log.append(event_type, payload)
        pipe.close()
