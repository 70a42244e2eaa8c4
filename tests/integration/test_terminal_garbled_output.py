"""A terminal whose VM's agent port sends output that holds no bytes, as the guest's root may
choose (base64 that is not, text with a lone surrogate no UTF-8 encodes): the agent's error.
The page is told ``agent_error`` and the socket closes with 4502 (not 1011), logged once as a
warning without a traceback, and the shell is killed. In process on SQLite and PostgreSQL, the
API served by uvicorn on loopback (a WebSocket needs a real server) over the fake backend, the
VM's agent a stand-in on loopback.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, served

WAIT_S = 10.0
GARBLED = {
    "invalid-base64": {"data": "abc", "encoding": "base64"},
    "stray-character": {"data": "aGVsbG8=!!", "encoding": "base64"},  # was read as "hello"
    "lone-surrogate": {"data": "\ud800"},
}


def agent_port(output: dict[str, str], killed: list[str]) -> Starlette:
    """A stand-in on a VM's agent port: a shell starts, sends ``output`` and never exits; a kill
    is recorded in ``killed``."""

    async def start(request: Request) -> Response:
        return JSONResponse({"exec_id": "shell1", "pid": 7})

    async def events(request: Request) -> Response:
        if int(request.query_params.get("after", "0")) >= 1:  # read on past the chunk: nothing
            return Response(status_code=404)
        line = json.dumps({"stream": "stdout", **output})
        return Response(f"id: 1\nevent: stdout\ndata: {line}\n\n", media_type="text/event-stream")

    async def kill(request: Request) -> Response:
        killed.append(request.path_params["exec_id"])
        return JSONResponse({"exec_id": "shell1", "signalled": True, "status": "exited"})

    return Starlette(
        routes=[
            Route("/exec", start, methods=["POST"]),
            Route("/exec/{exec_id}/events", events),
            Route("/exec/{exec_id}/kill", kill, methods=["POST"]),
        ]
    )


async def all_said(socket: ClientConnection) -> list[str | bytes]:
    """What the controller sent on ``socket`` until it closed."""
    said: list[str | bytes] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            said.append(await socket.recv())
    return said


@pytest.mark.parametrize("output", list(GARBLED.values()), ids=list(GARBLED))
async def test_output_that_holds_no_bytes_ends_the_terminal_as_the_agents_error(
    api: Api, output: dict[str, str]
) -> None:
    created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    killed: list[str] = []
    async with served(agent_port(output, killed)) as agent_url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = agent_url
        link = await api.client.post(f"/api/vms/{vm_id}/terminal", headers=api.headers())
        assert link.status_code == 201, link.text
        terminal_id, token = link.json()["terminalId"], link.json()["url"].split("#token=")[1]
        async with served(api.app) as api_url:
            socket_url = api_url.replace("http", "ws", 1) + f"/terminal/{terminal_id}/socket"
            with capture_logs() as logs:
                async with connect(socket_url, open_timeout=WAIT_S) as socket:
                    opening = {"type": "open", "token": token, "cols": 80, "rows": 24}
                    await socket.send(json.dumps(opening))
                    said = await all_said(socket)
                assert socket.close_code == 4502
    assert json.loads(said[0]) == {"type": "ready"}
    error = json.loads(said[-1])
    assert (error["type"], error["code"]) == ("error", "agent_error")
    assert vm_id in error["message"]
    assert agent_url not in error["message"]
    assert killed == ["shell1"]
    (warning,) = [r for r in logs if r["log_level"] in ("warning", "error", "critical")]
    assert (warning["event"], warning["code"]) == ("websocket_failed", "agent_error")
    assert "exc_info" not in warning
