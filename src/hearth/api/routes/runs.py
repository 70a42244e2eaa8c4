"""``/api/vms/{id}/runs``: a vendor CLI's headless run in a CLI VM, as one event schema.

``POST`` answers 202 with the run at once; its events come from ``GET …/runs/{runId}/events``
(``text/event-stream``; ``Last-Event-ID`` or ``?after=`` resumes after the last event seen, and
the stream ends after ``run.completed`` or ``run.failed``; 410 ``events_gone`` when events asked
for, all of them or those after that id, are no longer kept). The run goes on when a client goes
away. Every refusal (another user's VM, a VM not ready, a provider not logged in there, the
per-VM cap, a prompt too large) is a JSON error before anything starts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import Response
from fastapi.sse import format_sse_event

from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.routes.execs import Resume
from hearth.api.schemas import ERROR_RESPONSES, ErrorOut
from hearth.api.schemas_exec import event_stream_doc
from hearth.api.schemas_run import RUN_EVENTS, RunCreate, RunList, RunOut
from hearth.api.streams import event_stream
from hearth.errors import HearthError
from hearth.logging import get_logger
from hearth.store.records import RunEventRecord

router = APIRouter(tags=["runs"], responses=ERROR_RESPONSES)
_log = get_logger("api.runs")


@router.post("/api/vms/{vm_id}/runs", status_code=202)
async def start_run(vm_id: str, body: RunCreate, key: Key, ctl: Ctl) -> RunOut:
    """Start the provider's CLI on the prompt, with the login delivered into this VM."""
    run = await ctl.runs.start(vm_id, scope_of(key), body.request())
    return RunOut.of(run)


@router.get("/api/vms/{vm_id}/runs")
async def list_runs(vm_id: str, key: Key, ctl: Ctl) -> RunList:
    """The VM's runs, newest first (the last 100)."""
    return RunList(runs=[RunOut.of(run) for run in await ctl.runs.list(vm_id, scope_of(key))])


@router.get("/api/vms/{vm_id}/runs/{run_id}")
async def get_run(vm_id: str, run_id: str, key: Key, ctl: Ctl) -> RunOut:
    """The run: its status, the CLI's session id, usage, and how it ended."""
    return RunOut.of(await ctl.runs.get(vm_id, run_id, scope_of(key)))


@router.post("/api/vms/{vm_id}/runs/{run_id}/cancel")
async def cancel_run(vm_id: str, run_id: str, key: Key, ctl: Ctl) -> RunOut:
    """End the run (its CLI and everything it started); it fails with ``cancelled``."""
    return RunOut.of(await ctl.runs.cancel(vm_id, run_id, scope_of(key)))


async def _encoded(events: AsyncIterator[RunEventRecord]) -> AsyncIterator[bytes]:
    """The SSE bytes of ``events``; a stream that breaks off ends with an ``error`` event."""
    try:
        async for event in events:
            yield format_sse_event(data_str=event.data, event=event.type, id=str(event.seq))
    except HearthError as exc:
        _log.warning("run_stream_broken", code=exc.code, error=exc.message[:300])
        yield format_sse_event(data_str=json.dumps(exc.to_dict()["error"]), event="error")


@router.get(
    "/api/vms/{vm_id}/runs/{run_id}/events",
    response_model=None,
    responses={
        **event_stream_doc("The run's events after the given id, as they come", RUN_EVENTS),
        410: {
            "model": ErrorOut,
            "description": "The events to read (all of them, or those after the given id) are "
            "no longer all kept (events_gone: only the newest HEARTH_RUN_EVENTS_KEEP are; the "
            "message says from which id)",
            "content": {"application/json": {}},
        },
    },
)
async def run_events(
    vm_id: str,
    run_id: str,
    key: Key,
    ctl: Ctl,
    resume: Resume,
) -> Response:
    """The run's events (all, or those after ``Last-Event-ID`` / ``after``); 410 when some of
    them are no longer kept, rather than a stream that silently starts later."""
    events = await ctl.runs.events(vm_id, run_id, scope_of(key), after=resume)
    return event_stream(ctl.store, key, _encoded(events))
