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
from typing import Any, Literal, TypeAlias, TypedDict
from urllib.parse import quote

from hearth.sdk._calls import Call, _vm_path
from hearth.sdk._config import ResumePolicy
from hearth.sdk._errors import ExecFailed, HearthConnectionError
from hearth.sdk._follow import Follower, StreamRequest

EXEC_ID_HEADER = "X-Hearth-Exec-Id"


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

    def result(self, *, exec_id: str | None = None) -> ExecResult:
        """The result, once the ``exit`` event has been added; ``exec_id``: the command's id as
        its follower learnt it (a stream picked up again never shows ``started``)."""
        if self._exit is None:
            raise HearthConnectionError("stream_broken", "the events ended before the exit")
        return ExecResult(
            exec_id=self._exec_id or exec_id or "",
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


# The signals ``POST …/exec/{execId}/kill`` sends to a command's whole process group.
KillSignal: TypeAlias = Literal["SIGKILL", "SIGTERM", "SIGINT"]


def kill_exec(vm_id: str, exec_id: str, signal: KillSignal) -> Call[bool]:
    """``POST /api/vms/{id}/exec/{execId}/kill``: whether the command got ``signal`` (False:
    it had ended already)."""
    return Call(
        "POST",
        _vm_path(vm_id, f"/exec/{quote(exec_id, safe='')}/kill"),
        lambda body: bool(body["signalled"]),
        json={"signal": signal},
    )


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


class ExecFollower(Follower[ExecEvent]):
    """One command's events across reconnects (the loop is ``Follower``'s).

    The command's id comes with the answer's headers, so a stream that breaks before its first
    event is resumed too; the events after id 0 then come without ``ExecStarted``. Until the
    id is known a break is not picked up: sending the request again could run it twice.
    """

    ended_early = "the event stream ended before the exit"
    starting = "starting the command"

    def __init__(self, vm_id: str, body: dict[str, Any], policy: ResumePolicy) -> None:
        super().__init__(policy)
        self._path = f"/api/vms/{quote(vm_id, safe='')}/exec"
        self._body = body
        self.exec_id: str | None = None

    def request(self) -> StreamRequest | None:
        """Start the command, or read its events after the last one seen; None when done."""
        if self.done:
            return None
        if self.exec_id is None:
            return StreamRequest("POST", self._path, json=self._body)
        after = "0" if self.last_id is None else str(self.last_id)
        path = f"{self._path}/{quote(self.exec_id, safe='')}/events"
        return StreamRequest("GET", path, headers={"Last-Event-ID": after})

    @property
    def resumable(self) -> bool:
        """Once the command is known to run."""
        return self.exec_id is not None

    def took_headers(self, headers: Mapping[str, str]) -> None:
        """The answer names the command: from now on it runs, whatever breaks."""
        self.exec_id = self.exec_id or headers.get(EXEC_ID_HEADER)

    def typed(self, kind: str, data: Mapping[str, Any], event_id: int | None) -> ExecEvent | None:
        """``typed_event``, noting the command's id when ``started`` brings it."""
        event = typed_event(kind, data, event_id)
        if isinstance(event, ExecStarted):
            self.exec_id = event.exec_id
        return event

    def is_last(self, event: ExecEvent | None) -> bool:
        """``exit`` is."""
        return isinstance(event, ExecExit)
