"""Wire schemas of the exec routes (``/api/vms/{id}/exec``), camelCase like the rest."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from hearth.api.schemas import RequestModel, WireModel
from hearth.control.execs import ExecRequest

# Bounds a client cannot pass (the agent checks them again).
MAX_ARGS = 4096
MAX_ARG_CHARS = 128 * 1024
MAX_ENV = 1024
MAX_STDIN_CHARS = 1024 * 1024
MAX_TIMEOUT_S = 6 * 3600.0  # the agent's own limit
MAX_TERMINAL_CELLS = 1000  # columns or rows of a terminal (the agent's own limit)

Arg = Annotated[StrictStr, Field(max_length=MAX_ARG_CHARS)]
EnvName = Annotated[
    StrictStr, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
]


class ExecCreate(RequestModel):
    """``POST /api/vms/{id}/exec``: the command (argv, no shell), and how to run it."""

    BINARY_TEXT = frozenset({"stdin"})  # bytes for the command, stored nowhere

    cmd: Annotated[list[Arg], Field(min_length=1, max_length=MAX_ARGS)]
    env: Annotated[dict[EnvName, Arg], Field(max_length=MAX_ENV)] | None = None
    cwd: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | None = None
    stdin: Annotated[StrictStr, Field(max_length=MAX_STDIN_CHARS)] | None = None
    stdin_open: StrictBool = Field(
        default=False, description="keep stdin open for POST …/stdin (else it is closed)"
    )
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = Field(
        default=None, description="kill the whole process group after this long"
    )

    @field_validator("cmd")
    @classmethod
    def _program_named(cls, cmd: list[str]) -> list[str]:
        if not cmd[0]:
            raise ValueError("the program (the first item) must not be empty")
        return cmd

    def request(self) -> ExecRequest:
        """What the service runs."""
        return ExecRequest(
            cmd=list(self.cmd),
            env=self.env,
            cwd=self.cwd,
            stdin=self.stdin,
            stdin_open=self.stdin_open,
            timeout_s=self.timeout_s,
        )


class ExecAccepted(WireModel):
    """``?wait=false``: the command runs; read its events from ``…/exec/{execId}/events``."""

    exec_id: str
    pid: int


class ExecStdin(RequestModel):
    """``POST …/stdin``: text (or base64 bytes) for the command's stdin; ``eof`` closes it."""

    BINARY_TEXT = frozenset({"data"})

    data: Annotated[StrictStr, Field(max_length=MAX_STDIN_CHARS)] | None = None
    encoding: Literal["utf-8", "base64"] = "utf-8"
    eof: StrictBool = False


class ExecKill(RequestModel):
    """``POST …/kill``: the signal for the command's whole process group."""

    signal: Literal["SIGKILL", "SIGTERM", "SIGINT"] = "SIGKILL"


class ExecExit(WireModel):
    """How a command ended: exit code, or the signal that ended it, and why."""

    code: int | None
    signal: str | None
    duration_ms: int
    reason: Literal["exited", "timeout", "killed"]


class TerminalSize(WireModel):
    """A terminal's size in character cells."""

    cols: Annotated[StrictInt, Field(ge=1, le=MAX_TERMINAL_CELLS)]
    rows: Annotated[StrictInt, Field(ge=1, le=MAX_TERMINAL_CELLS)]


class ExecState(WireModel):
    """A command as the VM's agent tracks it: running, or how it ended."""

    exec_id: str
    pid: int
    cmd: list[str]
    status: str
    started_at: float
    timeout_s: float
    last_event_id: int
    exit: ExecExit | None = None
    pty: TerminalSize | None = None  # a command on a terminal (``hearth terminal``): its size


class ExecSignalled(WireModel):
    """``POST …/kill``: whether the group got the signal (False: it had ended already)."""

    exec_id: str
    signalled: bool
    status: str


class ExecStdinQueued(WireModel):
    """``POST …/stdin``: how many bytes wait for the command to read them."""

    exec_id: str
    queued_bytes: int


EXEC_EVENTS = (
    "events `stdout`/`stderr` {data, encoding?}, then one `exit` {code, signal, durationMs, "
    "reason}; each with an `id:` that Last-Event-ID resumes after"
)


def event_stream_doc(
    description: str, events: str = EXEC_EVENTS
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry of a 200 that is an event stream of ``events``."""
    return {
        200: {
            "description": description,
            "content": {"text/event-stream": {"schema": {"type": "string", "description": events}}},
        }
    }
