"""Following one event stream of the API to its end, across breaks. No I/O here.

A client loops: ``request()`` (None once the last event has been seen), send it; on an error
answer ``refused()``; else ``opened()``, ``accept()`` each event, ``ended()``. When any of that
raises ``StreamBroke`` or the connection fails, sleep ``resume_delay_s(exc)`` (which raises the
SDK's error instead when the stream may not be resumed) and loop. ``Follower`` holds what every
stream shares (the last id seen, the count of breaks in a row, the resume policy);
``ExecFollower`` (a command) and ``RunFollower`` (a run) say what to request and what each event
means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

from httpx_sse import ServerSentEvent

from hearth.sdk._config import ResumePolicy
from hearth.sdk._errors import (
    HearthApiError,
    HearthConnectionError,
    HearthSdkError,
    never_sent,
    transport_text,
)

E = TypeVar("E")
# Answers to a resume that mean "not now" rather than "never" (the controller or the VM's agent
# restarting); any other refusal (the VM destroyed, the stream unknown) ends the stream.
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class StreamRequest:
    """One request for an event stream."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def send_args(self) -> dict[str, Any]:
        """What ``httpx_sse.connect_sse`` / ``aconnect_sse`` take (a fresh ``headers`` dict:
        they add to it)."""
        return {
            "method": self.method,
            "url": self.path,
            "json": self.json,
            "headers": dict(self.headers),
        }


class StreamBroke(Exception):
    """The stream broke off; ``error`` is what the caller gets if it is not picked up again.
    Raised and caught inside the SDK only."""

    def __init__(self, error: HearthSdkError) -> None:
        super().__init__(str(error))
        self.error = error


class Follower(Generic[E]):
    """One stream's events across reconnects (see the module's docstring for the loop)."""

    # Why a stream that closed before its last event broke off.
    ended_early = "the event stream ended before its last event"
    # What the request that opens a stream not yet resumable starts (for its errors).
    starting = "the request"

    def __init__(self, policy: ResumePolicy, *, last_id: int | None = None) -> None:
        self._policy = policy
        self._breaks = 0  # breaks in a row, without an event in between
        self.last_id = last_id
        self.done = False

    # -- what a stream defines -----------------------------------------------------------------

    def request(self) -> StreamRequest | None:
        """What to send next; None when done."""
        raise NotImplementedError

    def typed(self, kind: str, data: Mapping[str, Any], event_id: int | None) -> E | None:
        """The SDK's event for one of the stream's (None for a kind it does not know)."""
        raise NotImplementedError

    def is_last(self, event: E | None) -> bool:
        """Whether ``event`` ends the stream."""
        raise NotImplementedError

    @property
    def resumable(self) -> bool:
        """Whether a break may be picked up again (sending the request again is harmless)."""
        return True

    def took_headers(self, headers: Mapping[str, str]) -> None:
        """What the answer's headers tell (nothing, unless a stream says otherwise)."""

    # -- shared ---------------------------------------------------------------------------------

    def refused(self, status: int, content: bytes) -> NoReturn:
        """The API answered an error instead of the stream."""
        error = HearthApiError.of_answer(status, content)
        if self.resumable and status in RETRY_STATUSES:
            raise StreamBroke(error)
        raise error

    def opened(self, status: int, headers: Mapping[str, str]) -> None:
        """The stream's answer arrived."""
        self.took_headers(headers)
        kind = headers.get("content-type", "").partition(";")[0].strip()
        if kind != "text/event-stream":
            raise HearthApiError(status, "not_an_event_stream", f"the answer is {kind!r}")

    def accept(self, sse: ServerSentEvent) -> E | None:
        """The SDK's event for one that arrived; None for one seen already or not known."""
        if sse.event == "error":
            data = sse.json()
            code, message = str(data.get("code", "stream_error")), str(data.get("message", ""))
            raise StreamBroke(HearthApiError(502, code, message))
        event_id = int(sse.id) if sse.id.isdigit() else None
        if event_id is not None and self.last_id is not None and event_id <= self.last_id:
            return None
        event = self.typed(sse.event, sse.json(), event_id)
        self._breaks = 0
        self.last_id = self.last_id if event_id is None else event_id
        self.done = self.done or self.is_last(event)
        return event

    def ended(self) -> None:
        """The stream closed: as it should after its last event, else it broke off."""
        if not self.done:
            raise StreamBroke(HearthConnectionError("stream_broken", self.ended_early))

    def resume_delay_s(self, exc: Exception) -> float:
        """The pause before picking the stream up again after ``exc``; raises the SDK's error
        instead when it may not be (``resumable`` is false, or it broke ``max_resumes`` times
        in a row). A transport error before the stream is resumable is ``unreachable`` only
        when the request never went out; else ``outcome_unknown``: what it starts may run."""
        if isinstance(exc, StreamBroke):
            error, cause = exc.error, None
        else:
            error, cause = self._lost(exc), exc
        if not self.resumable or self._breaks >= self._policy.max_resumes:
            raise error from cause
        self._breaks += 1
        return self._policy.delay_s(self._breaks)

    def _lost(self, exc: Exception) -> HearthConnectionError:
        """The error a transport error ``exc`` is, if the stream is not picked up again."""
        what = transport_text(exc)
        if self.resumable:
            return HearthConnectionError("stream_broken", what)
        if never_sent(exc):
            return HearthConnectionError("unreachable", what)
        # The request that starts what the stream follows went out: it may run, unseen.
        return HearthConnectionError.outcome_unknown(self.starting, exc)
