"""The exec and files routes over a CLI VM whose agent port answers as its root chooses, in
process on SQLite and PostgreSQL: the VM is the fake backend's, its agent address pointed at a
stand-in on loopback, as a VM whose root replaced the agent would answer.

A 2xx answer of the wrong shape (a field missing or of another type, an exec id that is no short
token, a download type that is neither ``file`` nor ``dir``) is a 502 ``agent_error`` naming
what was wrong, never a 500 or a header made of the guest's text; an agent's error message is
cut; a field the API does not know is dropped, not refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.agent_answers import GUEST_TEXT_CHARS
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, served

# What the stand-in answers, by "METHOD /path": a status, a body, extra raw headers.
Script = Mapping[str, tuple[int, bytes, list[tuple[bytes, bytes]]]]
RUNNING = {
    "exec_id": "e1",
    "pid": 7,
    "cmd": ["true"],
    "status": "running",
    "started_at": 1.5,
    "timeout_s": 60,
    "last_event_id": 0,
    "exit": None,
}


def agent_port(script: Script) -> Starlette:
    """A stand-in on a VM's agent port answering each request as ``script`` says (404 else)."""

    async def answer(request: Request) -> Response:
        status, body, raw = script.get(f"{request.method} {request.url.path}", (404, b"{}", []))
        await request.body()
        response = Response(body, status_code=status, media_type="application/json")
        response.raw_headers.extend(raw)  # as sent: bytes no str header would carry
        return response

    methods = ["GET", "PUT", "POST", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", answer, methods=methods)])


def ok(answer: object) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    return 200, json.dumps(answer).encode(), []


async def ask(api: Api, script: Script, method: str, path: str, **sent: object) -> httpx.Response:
    """``method`` on ``/api/vms/{id}{path}`` of a new VM whose agent answers by ``script``."""
    vm_id = await vm_for(api, "ann")
    async with served(agent_port(script)) as url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = url
        url_path = f"/api/vms/{vm_id}{path}"
        return await api.client.request(method, url_path, headers=api.headers(), **sent)  # type: ignore[arg-type]


START = ("POST", "/exec?wait=false", {"json": {"cmd": ["true"]}})
MALFORMED = [
    ("POST /exec", {}, START, "'exec_id'"),
    ("POST /exec", {"exec_id": "e1", "pid": "nope"}, START, "'pid': not an integer"),
    ("POST /exec", {"exec_id": "e1\r\nSet-Cookie: a=b", "pid": 1}, START, "'exec_id'"),
    ("POST /exec", {"exec_id": "e" * 65, "pid": 1}, START, "'exec_id'"),
    ("POST /exec", {"exec_id": "e1", "pid": True}, START, "'pid'"),
    ("GET /exec/e1", {"whatever": 1, "state": 5}, ("GET", "/exec/e1", {}), "'exec_id'"),
    ("GET /exec/e1", {**RUNNING, "exec_id": "e2"}, ("GET", "/exec/e1", {}), "another command"),
    ("GET /exec/e1", {**RUNNING, "pty": {"cols": 0, "rows": 1}}, ("GET", "/exec/e1", {}), "'pty'"),
    ("POST /exec/e1/kill", {}, ("POST", "/exec/e1/kill", {}), "'exec_id'"),
    (
        "POST /exec/e1/stdin",
        {"exec_id": "e1", "queued_bytes": "3"},
        ("POST", "/exec/e1/stdin", {"json": {"data": "hi"}}),
        "'queued_bytes'",
    ),
    ("PUT /files", {"path": "x"}, ("PUT", "/files?path=x", {"content": b"hi"}), "'type'"),
    ("GET /files/list", {"path": "x"}, ("GET", "/files/list?path=x", {}), "'type'"),
    (
        "GET /files/list",
        {"path": "x", "type": "dir", "truncated": False, "entries": [{"name": 1}]},
        ("GET", "/files/list?path=x", {}),
        "'entries'",
    ),
    ("DELETE /files", {"ok": 1}, ("DELETE", "/files?path=x", {}), "'path'"),
]


@pytest.mark.parametrize(
    ("route", "answer", "call", "named"),
    MALFORMED,
    ids=[
        "start-empty",
        "start-pid-text",
        "start-id-crlf",
        "start-id-long",
        "start-pid-bool",
        "state-other-shape",
        "state-other-exec",
        "state-pty-zero",
        "kill-empty",
        "stdin-bytes-text",
        "put-no-type",
        "list-no-type",
        "list-entry-name",
        "delete-other-shape",
    ],
)
async def test_a_malformed_answer_of_a_vms_agent_is_a_502_naming_what_was_wrong(
    api: Api,
    route: str,
    answer: object,
    call: tuple[str, str, dict[str, object]],
    named: str,
) -> None:
    method, path, sent = call
    response = await ask(api, {route: ok(answer)}, method, path, **sent)
    message = assert_error(response, 502, "agent_error")["message"]
    assert message.startswith("the agent of VM vm-")
    assert f"answered {route}" in message
    assert named in message
    assert "\r" not in message
    assert "Set-Cookie" not in message


async def test_an_exec_id_with_a_crlf_never_reaches_the_streams_headers(api: Api) -> None:
    started = ok({"exec_id": "e1\r\nSet-Cookie: a=b", "pid": 1})
    response = await ask(api, {"POST /exec": started}, "POST", "/exec", json={"cmd": ["true"]})
    assert_error(response, 502, "agent_error")
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("kind", ["filé".encode(), "€".encode(), b"tar"], ids=["e", "euro", "tar"])
async def test_a_download_of_a_type_other_than_file_or_dir_is_a_502(api: Api, kind: bytes) -> None:
    download = (200, b"hello", [(b"x-hearth-file-type", kind)])
    response = await ask(api, {"GET /files": download}, "GET", "/files?path=x")
    message = assert_error(response, 502, "agent_error")["message"]
    assert "answered GET /files with a file type" in message
    assert "x-hearth-file-type" not in response.headers


async def test_a_field_the_api_does_not_know_is_dropped_not_refused(api: Api) -> None:
    newer = ok({**RUNNING, "cpu_ms": 12, "exit": None})
    response = await ask(api, {"GET /exec/e1": newer}, "GET", "/exec/e1")
    assert response.status_code == 200, response.text
    assert response.json()["execId"] == "e1"
    assert "cpuMs" not in response.json()


async def test_an_agents_error_message_is_cut_before_a_client_reads_it(api: Api) -> None:
    refusal = {"error": {"code": "nope", "message": "A" * 3_000_000}}
    script = {"POST /exec": (500, json.dumps(refusal).encode(), [])}
    response = await ask(api, script, "POST", "/exec?wait=false", json={"cmd": ["true"]})
    message = assert_error(response, 502, "agent_error")["message"]
    assert "A" * 100 in message
    assert len(message) < GUEST_TEXT_CHARS + 200
    assert message.endswith(f"({3_000_000 - GUEST_TEXT_CHARS} more characters)")
