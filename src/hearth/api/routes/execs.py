"""``/api/vms/{id}/exec``: run a command in a CLI VM and stream what it prints.

``POST`` answers with the event stream at once (``text/event-stream``: ``started``, then the
command's ``stdout``/``stderr`` chunks and one ``exit``), or with ``?wait=false`` a 202 and its
``execId``. The command runs under the VM's agent: a client that disconnects loses nothing, and
``GET …/exec/{execId}/events`` with ``Last-Event-ID`` (or ``?after=``) goes on after the last
event it saw. Every refusal (another user's VM, a VM not ready, a bad body, the per-VM cap) is a
JSON error before any event is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse, Response
from fastapi.sse import format_sse_event

from hearth.agent_answers import guest_text
from hearth.agent_client import AgentError
from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.context import Controller
from hearth.api.headers import MAX_INT64, decimal
from hearth.api.schemas import ERROR_RESPONSES
from hearth.api.schemas_exec import (
    ExecAccepted,
    ExecCreate,
    ExecKill,
    ExecSignalled,
    ExecState,
    ExecStdin,
    ExecStdinQueued,
    event_stream_doc,
)
from hearth.api.streams import event_stream
from hearth.control.execs import ExecEvent
from hearth.errors import HearthError, InvalidInput
from hearth.logging import get_logger
from hearth.store import ApiKeyRecord

router = APIRouter(tags=["exec"], responses=ERROR_RESPONSES)
_log = get_logger("api.exec")
EXEC_ID_HEADER = "X-Hearth-Exec-Id"
# What may name an event relayed from a VM's agent (its own are stdout, stderr, exit, error).
# The name is written raw on the ``event:`` line, and the guest's root may send any: a lone CR in
# it (which the agent's reader keeps in the line, an SSE client ends the line at) would start
# fields of the guest's choosing, a whole forged event whose id moves the client's Last-Event-ID.
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    return format_sse_event(
        data_str=json.dumps(data, separators=(",", ":")),
        event=event,
        id=None if event_id is None else str(event_id),
    )


async def _encoded(
    events: AsyncIterator[ExecEvent], vm_id: str, exec_id: str, first: bytes | None = None
) -> AsyncIterator[bytes]:
    """The SSE bytes of ``events``; a stream that breaks off ends with an ``error`` event, as
    one does at an event whose name is not ``_EVENT_NAME``'s (the agent's error)."""
    if first is not None:
        yield first
    try:
        async for event in events:
            if _EVENT_NAME.fullmatch(event.type) is None:
                named = guest_text(event.type, 64)
                raise AgentError(
                    f"the agent of VM {vm_id}: the event stream of exec {exec_id} sent an event "
                    f"named {named!r}, which is not a word"
                )
            yield _sse(event.type, event.data, event.id)
    except HearthError as exc:
        _log.warning("exec_stream_broken", code=exc.code, error=exc.message[:300])
        yield _sse("error", exc.to_dict()["error"])


def _stream(
    ctl: Controller,
    key: ApiKeyRecord,
    events: AsyncIterator[ExecEvent],
    vm_id: str,
    exec_id: str,
    first: bytes | None = None,
) -> Response:
    encoded = _encoded(events, vm_id, exec_id, first)
    return event_stream(ctl.store, key, encoded, headers={EXEC_ID_HEADER: exec_id})


@router.post(
    "/api/vms/{vm_id}/exec",
    response_model=None,
    responses={
        **event_stream_doc("The command's events: `started` {execId, pid}, output, `exit`"),
        202: {"model": ExecAccepted, "description": "wait=false: started; read its events"},
    },
)
async def exec_command(
    vm_id: str,
    body: ExecCreate,
    key: Key,
    ctl: Ctl,
    wait: Annotated[
        bool, Query(description="false: answer 202 with the execId at once, stream nothing")
    ] = True,
) -> Response:
    """Run ``cmd`` (an argv, no shell) in the CLI VM, in its own process group."""
    started = await ctl.execs.start(vm_id, scope_of(key), body.request())
    exec_id = started["execId"]
    _log.info("exec_started", vm_id=vm_id, exec_id=exec_id, user_id=key.user_id)
    if not wait:
        accepted = ExecAccepted(exec_id=exec_id, pid=started["pid"])
        return JSONResponse(accepted.model_dump(by_alias=True), status_code=202)
    events = ctl.execs.events(vm_id, scope_of(key), exec_id)
    return _stream(ctl, key, events, vm_id, exec_id, first=_sse("started", started, 0))


# ``?after=``: where a stream resumes when no Last-Event-ID says.
AfterQuery = Annotated[int | None, Query(ge=0, le=MAX_INT64, description="the last event id seen")]
LastEventIdHeader = Annotated[str | None, Header(max_length=20)]


def resume_point(after: int | None, last_event_id: str | None) -> int:
    if last_event_id is None:
        return after or 0
    resume = decimal(last_event_id)
    if resume is None:
        raise InvalidInput("Last-Event-ID: must be the id of an event of this stream")
    return resume


async def _resume_of(after: AfterQuery = None, last_event_id: LastEventIdHeader = None) -> int:
    return resume_point(after, last_event_id)


# The id of the last event a reader of an event stream saw (0: none), from its request.
Resume = Annotated[int, Depends(_resume_of)]


@router.get(
    "/api/vms/{vm_id}/exec/{exec_id}/events",
    response_model=None,
    responses=event_stream_doc("The command's events after the given id, as they happen"),
)
async def exec_events(
    vm_id: str,
    exec_id: str,
    key: Key,
    ctl: Ctl,
    resume: Resume,
) -> Response:
    """The command's events (all of them, or those after ``Last-Event-ID`` / ``after``)."""
    events = await ctl.execs.opened(vm_id, scope_of(key), exec_id, after=resume)
    return _stream(ctl, key, events, vm_id, exec_id)


@router.get("/api/vms/{vm_id}/exec/{exec_id}")
async def exec_state(vm_id: str, exec_id: str, key: Key, ctl: Ctl) -> ExecState:
    """Whether the command still runs, and how it ended."""
    return ExecState.model_validate(await ctl.execs.status(vm_id, scope_of(key), exec_id))


@router.post("/api/vms/{vm_id}/exec/{exec_id}/stdin")
async def exec_stdin(
    vm_id: str, exec_id: str, body: ExecStdin, key: Key, ctl: Ctl
) -> ExecStdinQueued:
    """Write to the command's stdin (it must have been started with ``stdinOpen``)."""
    if body.data is None and not body.eof:
        raise InvalidInput("send data, eof: true, or both")
    payload: dict[str, Any] = {"encoding": body.encoding, "eof": body.eof}
    if body.data is not None:
        payload["data"] = body.data
    answer = await ctl.execs.stdin(vm_id, scope_of(key), exec_id, payload)
    return ExecStdinQueued.model_validate(answer)


@router.post("/api/vms/{vm_id}/exec/{exec_id}/kill")
async def exec_kill(
    vm_id: str, exec_id: str, key: Key, ctl: Ctl, body: ExecKill | None = None
) -> ExecSignalled:
    """Signal the command's whole process group (default SIGKILL)."""
    signal = (body or ExecKill()).signal
    return ExecSignalled.model_validate(await ctl.execs.kill(vm_id, scope_of(key), exec_id, signal))
