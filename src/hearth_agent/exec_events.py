"""An exec's event log: ordered output and exit events, bounded by backpressure, resumable.

Events carry increasing integer ids from 1. ``stdout`` and ``stderr`` events hold ``data``:
UTF-8 text when the bytes decode, otherwise base64 with ``"encoding": "base64"``; the one ``exit``
event comes last and closes the log.

Memory is bounded without losing output. An event stays in the log until it is acknowledged:

- explicitly, by a read that starts ``after=N`` (the reader has everything up to N);
- implicitly, by a following reader (an SSE stream) that wrote it out, once more than
  ``replay_bytes`` of later output has been written after it. What is still in the socket
  buffers when a connection drops is within that window, so a reconnect ``after=N`` (the last
  id the client saw) gets every event after N.

While the bytes the log keeps reach ``buffer_bytes``, ``wait_for_room`` blocks the pump: it stops
reading the pipes, the pipes fill, and the process blocks on write until a reader catches up.
"""

from __future__ import annotations

import base64
import codecs
import itertools
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from hearth_agent.errors import ExecEventsGone

# What an event costs beyond its data (the object, its dict, the JSON framing), so a flood of
# one-byte chunks is bounded by the same cap as a few big ones.
EVENT_OVERHEAD_BYTES = 128


class EventType(StrEnum):
    """What an event reports; the value is the SSE ``event:`` name."""

    STDOUT = "stdout"  # a chunk the process wrote to its standard output
    STDERR = "stderr"  # a chunk the process wrote to its standard error
    EXIT = "exit"  # the process ended; always the last event


@dataclass(frozen=True)
class ExecEvent:
    """One event: its id, its type and its JSON payload."""

    id: int
    type: EventType
    payload: dict[str, object]
    size: int


class OutputDecoder:
    """Turns one stream's chunks into event payloads: text while it is UTF-8, base64 otherwise.

    A multibyte character split across two reads is held back and decoded with the next one, so
    the concatenated payloads always give back exactly the bytes the process wrote.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")

    def decode(self, chunk: bytes) -> dict[str, object] | None:
        """The payload for ``chunk`` (plus any bytes held back), or None if all are held back."""
        held = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError:
            self._decoder.reset()
            return binary_payload(held + chunk)
        return {"data": text} if text else None

    def flush(self) -> dict[str, object] | None:
        """At end of stream: the bytes still held back (an incomplete character), as base64."""
        held = self._decoder.getstate()[0]
        self._decoder.reset()
        return binary_payload(held) if held else None


def binary_payload(data: bytes) -> dict[str, object]:
    """A chunk that is not UTF-8 text."""
    return {"data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


def payload_bytes(payload: dict[str, object]) -> bytes:
    """The raw bytes an output payload stands for."""
    data = payload["data"]
    assert isinstance(data, str)
    if payload.get("encoding") == "base64":
        return base64.b64decode(data)
    return data.encode("utf-8")


class EventLog:
    """The events of one exec; thread-safe. One pump appends, any number of readers read."""

    def __init__(self, *, buffer_bytes: int, replay_bytes: int) -> None:
        if not 0 < replay_bytes < buffer_bytes:
            raise ValueError("replay_bytes must be positive and below buffer_bytes")
        self._buffer_bytes = buffer_bytes
        self._replay_bytes = replay_bytes
        self._changed = threading.Condition()
        self._events: deque[ExecEvent] = deque()
        self._last_id = 0
        self._floor = 0  # every event up to this id is acknowledged and dropped
        self._kept_bytes = 0
        self._delivered = 0  # the highest id a following reader wrote out
        self._delivered_bytes = 0  # bytes of kept events with id <= _delivered
        self._closed = False

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 before the first)."""
        with self._changed:
            return self._last_id

    @property
    def kept_bytes(self) -> int:
        """What the kept events cost, as counted against ``buffer_bytes``."""
        with self._changed:
            return self._kept_bytes

    @property
    def closed(self) -> bool:
        """Whether the exit event has been appended."""
        with self._changed:
            return self._closed

    @property
    def collected(self) -> bool:
        """Whether a reader has had the exit event: a follower wrote it out, or a read
        acknowledged it."""
        with self._changed:
            return self._closed and max(self._delivered, self._floor) >= self._last_id

    def wait_for_room(self, timeout_s: float) -> bool:
        """Block while the log is full; whether there is room (False: still full at timeout)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._kept_bytes < self._buffer_bytes, timeout=timeout_s
            )

    def append(self, event_type: EventType, payload: dict[str, object]) -> int:
        """Add an event and wake the readers; return its id. The exit event closes the log."""
        data = payload.get("data")
        size = EVENT_OVERHEAD_BYTES + (len(data) if isinstance(data, str) else 0)
        with self._changed:
            if self._closed:
                raise ValueError("the log is closed: the exit event was already appended")
            self._last_id += 1
            self._events.append(
                ExecEvent(id=self._last_id, type=event_type, payload=payload, size=size)
            )
            self._kept_bytes += size
            self._closed = event_type is EventType.EXIT
            self._changed.notify_all()
            return self._last_id

    def read(self, after: int, *, wait_s: float = 0.0) -> list[ExecEvent]:
        """The kept events after ``after``, which acknowledges everything up to it.

        Waits up to ``wait_s`` for a first event if there is none yet. Raises ExecEventsGone if
        events after ``after`` were already acknowledged (by another reader) and dropped.
        """
        with self._changed:
            self._acknowledge(after)
            self._wait_past(after, wait_s)
            return self._since(after)

    def follow(self, after: int, *, keepalive_s: float) -> Iterator[ExecEvent | None]:
        """Every event after ``after`` as it comes, ending with the exit event.

        Acknowledges ``after`` and raises ExecEventsGone now, not at the first item, so a route
        can still answer with an error status. The iterator yields None when nothing came for
        ``keepalive_s`` (time for a keepalive), and counts an event as written out once its
        consumer asks for the next item; it raises ExecEventsGone if another reader acknowledged
        events it has not reached yet.
        """
        with self._changed:
            self._acknowledge(after)
            self._since(after)
        return self._following(after, keepalive_s)

    def _following(self, position: int, keepalive_s: float) -> Iterator[ExecEvent | None]:
        while True:
            with self._changed:
                self._wait_past(position, keepalive_s)
                batch = self._since(position)
                finished = self._closed
            if not batch and not finished:
                yield None
            for event in batch:
                yield event
                position = event.id
                self._mark_delivered(event.id)
            if finished:
                return

    def wait_until_closed(self, timeout_s: float | None) -> bool:
        """Block until the exit event is in; whether it is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._closed, timeout=timeout_s)

    def _wait_past(self, position: int, timeout_s: float) -> None:
        """Wait for an event after ``position`` or the log's end; the caller holds the lock."""
        self._changed.wait_for(lambda: self._last_id > position or self._closed, timeout=timeout_s)

    def _since(self, after: int) -> list[ExecEvent]:
        if after < self._floor:
            raise ExecEventsGone(
                f"events up to id {self._floor} were acknowledged and dropped; "
                f"cannot resume after {after}"
            )
        if not self._events or after >= self._last_id:
            return []
        return list(itertools.islice(self._events, after + 1 - self._events[0].id, None))

    def _acknowledge(self, upto: int) -> None:
        """Drop every kept event with id <= ``upto``; the caller holds the lock."""
        upto = min(upto, self._last_id)
        while self._events and self._events[0].id <= upto:
            self._drop_oldest()
        self._floor = max(self._floor, upto)
        self._changed.notify_all()

    def _mark_delivered(self, event_id: int) -> None:
        """A following reader wrote ``event_id`` out: keep only ``replay_bytes`` of such events."""
        with self._changed:
            if event_id <= self._delivered:
                return
            if self._events:
                first = self._events[0].id
                newly = itertools.islice(
                    self._events, max(self._delivered + 1, first) - first, event_id - first + 1
                )
                self._delivered_bytes += sum(event.size for event in newly)
            self._delivered = event_id
            dropped = False
            while self._events and self._delivered_bytes > self._replay_bytes:
                self._floor = self._events[0].id
                self._drop_oldest()
                dropped = True
            if dropped:
                self._changed.notify_all()

    def _drop_oldest(self) -> None:
        event = self._events.popleft()
        self._kept_bytes -= event.size
        if event.id <= self._delivered:
            self._delivered_bytes -= event.size
