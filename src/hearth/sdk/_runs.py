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
from typing import Any, TypedDict
from urllib.parse import quote

from hearth.sdk._calls import Call, _given, _vm_path
from hearth.sdk._config import ResumePolicy
from hearth.sdk._errors import HearthConnectionError
from hearth.sdk._follow import Follower, StreamRequest
from hearth.sdk._models import WireRecord

RUN_ENDED = frozenset({"completed", "failed"})
_TERMINAL_EVENTS = frozenset({"run.completed", "run.failed"})


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


class RunFollower(Follower[RunEvent]):
    """One run's events to its end, resuming after breaks (the loop is ``Follower``'s): the run
    exists before its events are read, so every break may be picked up again."""

    ended_early = "the event stream ended before the run"

    def __init__(self, vm_id: str, run_id: str, policy: ResumePolicy, *, after: int = 0) -> None:
        super().__init__(policy, last_id=after)
        self._path = _vm_path(vm_id, f"/runs/{quote(run_id, safe='')}/events")

    def request(self) -> StreamRequest | None:
        """The events after the last one seen; None when done."""
        if self.done:
            return None
        return StreamRequest("GET", self._path, headers={"Last-Event-ID": str(self.last_id or 0)})

    def typed(self, kind: str, data: Mapping[str, Any], event_id: int | None) -> RunEvent:
        """Every event of a run is a ``RunEvent``."""
        return RunEvent(type=kind, data=dict(data), id=event_id)

    def is_last(self, event: RunEvent | None) -> bool:
        """``run.completed`` and ``run.failed`` are."""
        return event is not None and event.terminal
