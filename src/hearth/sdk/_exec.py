"""A command in a VM: its request, its typed events and result, and following its event stream
across breaks. No I/O here: the clients send what ``ExecFollower`` asks for and feed it back
what arrives.

The API streams ``started`` (id 0), ``stdout``/``stderr`` chunks and one ``exit``, each with an
id; the command runs under the VM's agent whether or not anybody reads, and
``GET …/exec/{execId}/events`` with ``Last-Event-ID`` gives every event after that id. So a
stream that breaks off (the connection drops, or the API reports with an ``error`` event that it
lost the VM's agent) is opened again after the last id seen, and nothing is lost or repeated.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Protocol, TypeAlias, TypedDict, TypeVar
from urllib.parse import quote

from httpx_sse import ServerSentEvent

from hearth.sdk._config import ResumePolicy
from hearth.sdk._errors import ExecFailed, HearthApiError, HearthConnectionError, HearthSdkError

EXEC_ID_HEADER = "X-Hearth-Exec-Id"
# Answers to a resume that mean "not now" rather than "never" (the controller or the VM's agent
# restarting); any other refusal (the VM destroyed, the command unknown) ends the stream.
_RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class ExecStarted:
    """The command started: its id (to read its events again) and its process id in the VM."""

    exec_id: str
    pid: int
    id: int = 0


@dataclass(frozen=True)
class ExecOutput:
    """A chunk the command wrote to ``stream``, byte for byte."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    id: int | None = None


@dataclass(frozen=True)
class ExecExit:
    """How the command ended: its exit ``code``, or the ``signal`` that ended it, and why
    (``reason``: ``exited``, ``timeout`` or ``killed``)."""

    code: int | None
    signal: str | None
    duration_ms: int
    reason: str
    id: int | None = None


ExecEvent: TypeAlias = ExecStarted | ExecOutput | ExecExit


@dataclass(frozen=True)
class ExecResult:
    """A command that ended: all it wrote, and how it ended."""

    exec_id: str
    stdout: bytes = field(repr=False)
    stderr: bytes = field(repr=False)
    exit_code: int | None
    signal: str | None
    reason: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        """Whether the command exited with code 0."""
        return self.exit_code == 0 and self.signal is None

    def check(self) -> ExecResult:
        """This result if the command exited 0; else ExecFailed carrying it."""
        if not self.ok:
            raise ExecFailed(self)
        return self


class ExecCollector:
    """Gathers a command's events into its ``ExecResult``."""

    def __init__(self) -> None:
        self._exec_id = ""
        self._output: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._exit: ExecExit | None = None

    def add(self, event: ExecEvent) -> None:
        """Take one event, in the order they came."""
        if isinstance(event, ExecStarted):
            self._exec_id = event.exec_id
        elif isinstance(event, ExecOutput):
            self._output[event.stream].append(event.data)
        else:
            self._exit = event

    def result(self) -> ExecResult:
        """The result, once the ``exit`` event has been added."""
        if self._exit is None:
            raise HearthConnectionError("stream_broken", "the events ended before the exit")
        return ExecResult(
            exec_id=self._exec_id,
            stdout=b"".join(self._output["stdout"]),
            stderr=b"".join(self._output["stderr"]),
            exit_code=self._exit.code,
            signal=self._exit.signal,
            reason=self._exit.reason,
            duration_ms=self._exit.duration_ms,
        )


class ExecOptions(TypedDict, total=False):
    """How ``vm.exec`` / ``vm.exec_stream`` run a command (each optional, None: the default)."""

    env: Mapping[str, str] | None  # added to the VM's environment
    cwd: str | None  # the directory to run in (default: the VM's workspace)
    stdin: str | None  # text fed to the command's stdin, which is then closed
    timeout_s: float | None  # kill the command's whole process group after this long


def exec_body(cmd: Sequence[str], options: ExecOptions) -> dict[str, Any]:
    """The JSON of ``POST /api/vms/{id}/exec``."""
    if isinstance(cmd, str | bytes):
        raise TypeError("cmd is an argv list, run without a shell: e.g. ['sh', '-c', 'ls | wc']")
    env = options.get("env")
    wire = {
        "env": dict(env) if env else None,
        "cwd": options.get("cwd"),
        "stdin": options.get("stdin"),
        "timeoutS": options.get("timeout_s"),
    }
    return {"cmd": list(cmd), **{k: v for k, v in wire.items() if v is not None}}


def _output_bytes(data: Mapping[str, Any]) -> bytes:
    text = str(data.get("data", ""))
    return base64.b64decode(text) if data.get("encoding") == "base64" else text.encode("utf-8")


def typed_event(kind: str, data: Mapping[str, Any], event_id: int | None) -> ExecEvent | None:
    """The SDK's event for one SSE event of the API; None for a kind it does not know."""
    if kind == "started":
        return ExecStarted(exec_id=str(data["execId"]), pid=int(data["pid"]), id=event_id or 0)
    if kind == "stdout" or kind == "stderr":
        stream: Literal["stdout", "stderr"] = "stdout" if kind == "stdout" else "stderr"
        return ExecOutput(stream=stream, data=_output_bytes(data), id=event_id)
    if kind == "exit":
        code, signal = data.get("code"), data.get("signal")
        return ExecExit(
            code=None if code is None else int(code),
            signal=None if signal is None else str(signal),
            duration_ms=int(data.get("durationMs", 0)),
            reason=str(data.get("reason", "exited")),
            id=event_id,
        )
    return None


@dataclass(frozen=True)
class StreamRequest:
    """One request for a command's event stream."""

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


E_co = TypeVar("E_co", covariant=True)


class Follower(Protocol[E_co]):
    """What the clients' event loop drives: ``ExecFollower`` (a command) and ``RunFollower``
    (a run) read their streams to the end this way, resuming after breaks."""

    def request(self) -> StreamRequest | None: ...
    def refused(self, status: int, content: bytes) -> NoReturn: ...
    def opened(self, status: int, headers: Mapping[str, str]) -> None: ...
    def accept(self, sse: ServerSentEvent) -> E_co | None: ...
    def ended(self) -> None: ...
    def resume_delay_s(self, exc: Exception) -> float: ...


class ExecFollower:
    """One command's events across reconnects: what to request next, what each event means,
    and whether (and after how long) a break is picked up again.

    A client loops: ``request()`` (None once the exit has been seen), send it; on an error
    answer ``refused()``; else ``opened()``, ``accept()`` each event, ``ended()``. When any of
    that raises ``StreamBroke`` or the connection fails, sleep ``resume_delay_s(exc)`` (which
    raises the SDK's error instead when the stream may not be resumed) and loop.

    The command's id comes with the answer's headers, so a stream that breaks before its first
    event is resumed too; the events after id 0 then come without ``ExecStarted``.
    """

    def __init__(self, vm_id: str, body: dict[str, Any], policy: ResumePolicy) -> None:
        self._path = f"/api/vms/{quote(vm_id, safe='')}/exec"
        self._body = body
        self._policy = policy
        self._breaks = 0  # breaks in a row, without an event in between
        self.exec_id: str | None = None
        self.last_id: int | None = None
        self.done = False

    def request(self) -> StreamRequest | None:
        """Start the command, or read its events after the last one seen; None when done."""
        if self.done:
            return None
        if self.exec_id is None:
            return StreamRequest("POST", self._path, json=self._body)
        after = "0" if self.last_id is None else str(self.last_id)
        path = f"{self._path}/{quote(self.exec_id, safe='')}/events"
        return StreamRequest("GET", path, headers={"Last-Event-ID": after})

    def refused(self, status: int, content: bytes) -> NoReturn:
        """The API answered an error instead of the stream."""
        error = HearthApiError.of_answer(status, content)
        if self.exec_id is not None and status in _RETRY_STATUSES:
            raise StreamBroke(error)
        raise error

    def opened(self, status: int, headers: Mapping[str, str]) -> None:
        """The stream's answer arrived: from now on the command runs, whatever breaks."""
        self.exec_id = self.exec_id or headers.get(EXEC_ID_HEADER)
        kind = headers.get("content-type", "").partition(";")[0].strip()
        if kind != "text/event-stream":
            raise HearthApiError(status, "not_an_event_stream", f"the answer is {kind!r}")

    def accept(self, sse: ServerSentEvent) -> ExecEvent | None:
        """The SDK's event for one that arrived; None for one seen already or not known."""
        if sse.event == "error":
            data = sse.json()
            code, message = str(data.get("code", "stream_error")), str(data.get("message", ""))
            raise StreamBroke(HearthApiError(502, code, message))
        event_id = int(sse.id) if sse.id.isdigit() else None
        if event_id is not None and self.last_id is not None and event_id <= self.last_id:
            return None
        event = typed_event(sse.event, sse.json(), event_id)
        self._breaks = 0
        self.last_id = self.last_id if event_id is None else event_id
        if isinstance(event, ExecStarted):
            self.exec_id = event.exec_id
        self.done = self.done or isinstance(event, ExecExit)
        return event

    def ended(self) -> None:
        """The stream closed: as it should after ``exit``, else it broke off."""
        if not self.done:
            raise StreamBroke(
                HearthConnectionError("stream_broken", "the event stream ended before the exit")
            )

    def resume_delay_s(self, exc: Exception) -> float:
        """The pause before picking the stream up again after ``exc``; raises the SDK's error
        instead when it may not be: the command may not have started (sending the request
        again could run it twice), or it broke ``max_resumes`` times in a row."""
        if isinstance(exc, StreamBroke):
            error, cause = exc.error, None
        else:
            code = "unreachable" if self.exec_id is None else "stream_broken"
            error, cause = HearthConnectionError(code, f"{type(exc).__name__}: {exc}"), exc
        if self.exec_id is None or self._breaks >= self._policy.max_resumes:
            raise error from cause
        self._breaks += 1
        return self._policy.delay_s(self._breaks)
