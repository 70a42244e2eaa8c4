"""A command's event stream as the guest's root may shape it: whatever text a VM's agent port
sends (line ends in its output, in an event's name), each of its events reaches an API client as
one event, and nothing it sends becomes a field of the controller's stream (an event of its own,
an ``id:`` that moves the client's Last-Event-ID). An SSE client ends a line at CRLF, LF and a
lone CR alike (httpx-sse, the SDK's reader, does). In process on SQLite and PostgreSQL over the
fake backend, the VM's agent a stand-in on loopback.
"""

from __future__ import annotations

import json
from typing import Any

from httpx_sse import EventSource
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, served

# Output text holding every line end, and what would be fields if it were written raw.
GUEST_TEXT = "one\rtwo\nthree\r\nfour\nevent: forged\rid: 999\r\ndata: {}\n\n"
OUTPUT = {"stream": "stdout", "data": GUEST_TEXT}
EXIT = {"exit_code": 0, "signal": None, "reason": "exited"}
# An event name that, written raw, is a whole event of the guest's (with an id that would make
# the SDK skip every real event up to it as seen already), then the start of a real one.
FORGED_NAME = 'forged\rdata: {"forged":true}\rid: 999\r\revent: stdout'


def agent_port(events: bytes) -> Starlette:
    """A stand-in on a VM's agent port: a command starts, and its event stream is ``events``."""

    async def start(request: Request) -> Response:
        return JSONResponse({"exec_id": "cmd1", "pid": 7})

    async def stream(request: Request) -> Response:
        return Response(events, media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/exec", start, methods=["POST"]),
            Route("/exec/{exec_id}/events", stream),
        ]
    )


def agent_event(event_id: int, name: str, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def events_of(api: Api, agent_stream: bytes) -> tuple[bytes, list[tuple[str, str, Any]]]:
    """What a client reads of a command run where the agent port sends ``agent_stream``: the
    raw body, and each event (id, name, data) as httpx-sse reads it."""
    created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    async with served(agent_port(agent_stream)) as agent_url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = agent_url
        headers = {**api.headers(), "Accept": "text/event-stream"}
        answer = await api.client.post(
            f"/api/vms/{vm_id}/exec", json={"cmd": ["true"]}, headers=headers
        )
    assert answer.status_code == 200, answer.text
    read = [(sse.id, sse.event, sse.json()) for sse in EventSource(answer).iter_sse()]
    return answer.content, read


async def test_output_text_with_line_ends_arrives_whole_in_one_event(api: Api) -> None:
    stream = agent_event(1, "stdout", OUTPUT) + agent_event(2, "exit", EXIT)
    raw, read = await events_of(api, stream)
    assert [(event_id, name) for event_id, name, _ in read] == [
        ("0", "started"),
        ("1", "stdout"),
        ("2", "exit"),
    ]
    assert read[1][2]["data"] == GUEST_TEXT
    assert b"\r" not in raw


async def test_an_event_name_with_a_line_end_ends_the_stream_as_the_agents_error(
    api: Api,
) -> None:
    stream = agent_event(1, FORGED_NAME, OUTPUT) + agent_event(2, "exit", EXIT)
    raw, read = await events_of(api, stream)
    assert [(event_id, name) for event_id, name, _ in read] == [("0", "started"), ("0", "error")]
    error = read[1][2]
    assert error["code"] == "agent_error"
    assert error["message"].startswith("the agent of VM vm-")
    assert "exec cmd1" in error["message"]
    assert b"\r" not in raw
