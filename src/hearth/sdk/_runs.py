"""A vendor CLI's run in a VM: its request, typed events and result, and following its events
across breaks. No I/O here: the clients send what ``RunFollower`` asks for and feed it back what
arrives.

``POST /api/vms/{id}/runs`` answers the run at once (202); ``GET …/runs/{runId}/events`` streams
its events, one schema for every CLI, each with an id, ending after ``run.completed`` or
``run.failed``. The run goes on whether or not anybody reads, so a stream that breaks off is
opened again after the last id seen, and nothing is lost or repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TypedDict
from urllib.parse import quote

from httpx_sse import ServerSentEvent

from hearth.sdk._calls import Call, _given, _vm_path
from hearth.sdk._config import ResumePolicy
from hearth.sdk._errors import HearthApiError, HearthConnectionError
from hearth.sdk._exec import StreamBroke, StreamRequest
from hearth.sdk._models import WireRecord

RUN_ENDED = frozenset({"completed", "failed"})
_TERMINAL_EVENTS = frozenset({"run.completed", "run.failed"})
_RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(kw_only=True)
class RunInfo(WireRecord):
    """A run as the API shows it."""

    _instants = ("created_at", "finished_at")

    id: str
    vm_id: str
    provider: str
    status: str
    user_id: str | None = None
    model: str | None = None
    resume: str | None = None
    session_id: str | None = None
    usage: dict[str, Any] | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    failure: dict[str, Any] | None = None
    last_event_id: int = 0
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ended(self) -> bool:
        """Whether the run has ended (completed or failed)."""
        return self.status in RUN_ENDED


@dataclass(frozen=True)
class RunEvent:
    """One event of a run: ``type`` (``message.delta``, ``tool.started``, …), its ``data``
    (the API's JSON, camelCase) and its id."""

    type: str
    data: dict[str, Any]
    id: int | None = None

    @property
    def terminal(self) -> bool:
        """Whether this is the run's last event (``run.completed`` / ``run.failed``)."""
        return self.type in _TERMINAL_EVENTS


@dataclass(frozen=True)
class RunResult:
    """A run that ended: the assistant's text, how it ended, and what it used."""

    run_id: str
    status: str  # completed | failed
    text: str
    session_id: str | None
    usage: dict[str, Any] | None
    failure: dict[str, Any] | None = None
    events: list[RunEvent] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the run completed."""
        return self.status == "completed"


class RunCollector:
    """Gathers a run's events into its ``RunResult``."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._events: list[RunEvent] = []

    def add(self, event: RunEvent) -> None:
        """Take one event, in the order they came."""
        self._events.append(event)

    def result(self) -> RunResult:
        """The result, once the terminal event has been added."""
        if not self._events or not self._events[-1].terminal:
            raise HearthConnectionError("stream_broken", "the events ended before the run did")
        last = self._events[-1]
        text = "".join(
            str(e.data.get("text", "")) for e in self._events if e.type == "message.delta"
        )
        completed = last.type == "run.completed"
        return RunResult(
            run_id=self._run_id,
            status="completed" if completed else "failed",
            text=text,
            session_id=last.data.get("sessionId") if completed else None,
            usage=last.data.get("usage") if completed else None,
            failure=None if completed else dict(last.data),
            events=list(self._events),
        )


class RunOptions(TypedDict, total=False):
    """How a run goes (each optional, None: the default)."""

    model: str | None  # the CLI's model name
    resume: str | None  # a run's ``session_id``: continue that conversation
    cwd: str | None  # the directory to run in (default: the VM's workspace)
    timeout_s: float | None  # fail with ``timeout`` (and end the CLI) after this long


def run_body(provider: str, prompt: str, options: RunOptions) -> dict[str, Any]:
    """The JSON of ``POST /api/vms/{id}/runs``."""
    return {
        "provider": provider,
        "prompt": prompt,
        **_given(
            model=options.get("model"),
            resume=options.get("resume"),
            cwd=options.get("cwd"),
            timeoutS=options.get("timeout_s"),
        ),
    }


def start_run(vm_id: str, body: dict[str, Any]) -> Call[RunInfo]:
    """``POST /api/vms/{id}/runs``: 202 with the run."""
    return Call("POST", _vm_path(vm_id, "/runs"), RunInfo.from_wire, json=body)


def get_run(vm_id: str, run_id: str) -> Call[RunInfo]:
    """``GET /api/vms/{id}/runs/{runId}``."""
    return Call("GET", _vm_path(vm_id, f"/runs/{quote(run_id, safe='')}"), RunInfo.from_wire)


def list_runs(vm_id: str) -> Call[list[RunInfo]]:
    """``GET /api/vms/{id}/runs``: newest first."""
    return Call(
        "GET",
        _vm_path(vm_id, "/runs"),
        lambda body: [RunInfo.from_wire(run) for run in body["runs"]],
    )


def cancel_run(vm_id: str, run_id: str) -> Call[RunInfo]:
    """``POST /api/vms/{id}/runs/{runId}/cancel``."""
    return Call(
        "POST", _vm_path(vm_id, f"/runs/{quote(run_id, safe='')}/cancel"), RunInfo.from_wire
    )


class RunFollower:
    """Reads one run's events to its end, resuming after breaks (the loop ``ExecFollower``
    describes: ``request``, ``refused``/``opened``, ``accept``, ``ended``, ``resume_delay_s``)."""

    def __init__(self, vm_id: str, run_id: str, policy: ResumePolicy, *, after: int = 0) -> None:
        self._path = _vm_path(vm_id, f"/runs/{quote(run_id, safe='')}/events")
        self._policy = policy
        self._breaks = 0
        self.last_id = after
        self.done = False

    def request(self) -> StreamRequest | None:
        """The events after the last one seen; None when done."""
        if self.done:
            return None
        return StreamRequest("GET", self._path, headers={"Last-Event-ID": str(self.last_id)})

    def refused(self, status: int, content: bytes) -> NoReturn:
        """The API answered an error instead of the stream."""
        error = HearthApiError.of_answer(status, content)
        if status in _RETRY_STATUSES:
            raise StreamBroke(error)
        raise error

    def opened(self, status: int, headers: Mapping[str, str]) -> None:
        """The stream's answer arrived."""
        kind = headers.get("content-type", "").partition(";")[0].strip()
        if kind != "text/event-stream":
            raise HearthApiError(status, "not_an_event_stream", f"the answer is {kind!r}")

    def accept(self, sse: ServerSentEvent) -> RunEvent | None:
        """The SDK's event for one that arrived; None for one seen already."""
        if sse.event == "error":
            data = sse.json()
            code, message = str(data.get("code", "stream_error")), str(data.get("message", ""))
            raise StreamBroke(HearthApiError(502, code, message))
        event_id = int(sse.id) if sse.id.isdigit() else None
        if event_id is not None and event_id <= self.last_id:
            return None
        event = RunEvent(type=sse.event, data=sse.json(), id=event_id)
        self._breaks = 0
        self.last_id = self.last_id if event_id is None else event_id
        self.done = self.done or event.terminal
        return event

    def ended(self) -> None:
        """The stream closed: as it should after the run's last event, else it broke off."""
        if not self.done:
            raise StreamBroke(
                HearthConnectionError("stream_broken", "the event stream ended before the run")
            )

    def resume_delay_s(self, exc: Exception) -> float:
        """The pause before reading on after ``exc``; the SDK's error after ``max_resumes``
        breaks in a row."""
        if isinstance(exc, StreamBroke):
            error, cause = exc.error, None
        else:
            error = HearthConnectionError("stream_broken", f"{type(exc).__name__}: {exc}")
            cause = exc
        if self._breaks >= self._policy.max_resumes:
            raise error from cause
        self._breaks += 1
        return self._policy.delay_s(self._breaks)
