"""A NUL character anywhere a client can put one (a path id, a query parameter, a JSON
string) is refused with a JSON 4xx, on SQLite and PostgreSQL alike, and nothing is stored.

PostgreSQL's text cannot hold NUL (its driver raises), a program's argv and environment cannot
either, and no id the controller hands out contains one: the API refuses it at the boundary
rather than letting a lookup or a write fail as a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error

NUL = "%00"

# Each route with a path parameter, the parameter holding a NUL.
PATHS = [
    ("GET", f"/api/vms/vm-{NUL}"),
    ("DELETE", f"/api/vms/{NUL}"),
    ("PATCH", f"/api/vms/a{NUL}b"),
    ("POST", f"/api/vms/{NUL}/pause"),
    ("GET", f"/api/vms/{NUL}/console"),
    ("GET", f"/api/vms/{NUL}/credentials"),
    ("GET", f"/api/vms/{NUL}/runs"),
    ("GET", f"/api/vms/{NUL}/network"),
    ("GET", f"/api/vms/{NUL}/files/list"),
    ("GET", f"/api/webhooks/{NUL}"),
    ("DELETE", f"/api/webhooks/%F1%91%9C%BD%05%08%C2%AA%C3%A3%3A{NUL}"),
    ("GET", f"/api/webhooks/{NUL}/deliveries"),
    ("GET", f"/api/auth/session/{NUL}"),
    ("POST", f"/api/auth/session/{NUL}/cancel"),
    ("GET", f"/api/credentials/{NUL}"),
    ("DELETE", f"/api/credentials/ann/{NUL}"),
    ("DELETE", f"/api/keys/{NUL}"),
    ("GET", f"/api/users/{NUL}/workspace"),
    ("DELETE", f"/api/users/a{NUL}/workspace"),
]


@pytest.mark.parametrize(("method", "path"), PATHS, ids=[f"{m} {p}" for m, p in PATHS])
async def test_a_nul_in_a_path_id_is_refused_422(api: Api, method: str, path: str) -> None:
    body = {} if method == "PATCH" else None
    response = await api.client.request(method, path, json=body, headers=api.headers())
    error = assert_error(response, 422, "invalid_input")
    assert "NUL" in error["message"]


@pytest.mark.parametrize(
    "path",
    [
        f"/api/auth/sessions?userId=ann{NUL}",
        f"/api/vms?userId={NUL}",
        f"/api/vms/vm-1/files?path=a{NUL}",
        f"/view/session?token=abcdefgh{NUL}",
        f"/view/ses{NUL}sion?token=abcdefgh",
    ],
)
async def test_a_nul_in_a_query_or_a_public_path_is_refused_422(api: Api, path: str) -> None:
    response = await api.client.get(path, headers=api.headers())
    error = assert_error(response, 422, "invalid_input")
    assert "NUL" in error["message"]


async def test_a_nul_in_a_query_of_a_route_that_reads_none_is_ignored(api: Api) -> None:
    # As any undeclared parameter is; neither route documents a 422.
    assert (await api.client.get(f"/health?probe={NUL}")).status_code == 200
    metrics = await api.client.get(f"/metrics?x={NUL}", headers=api.headers())
    assert metrics.status_code == 200, metrics.text


BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/api/webhooks", {"url": "http://127.0.0.1:9/\u0000", "events": ["vm.ready"]}),
    ("/api/webhooks", {"url": "http://127.0.0.1:9/", "events": ["vm.ready\u0000"]}),
    ("/api/keys", {"userId": "ann\u0000"}),
    ("/api/vms", {"userId": "ann", "vmType": "cli\u0000"}),
    ("/api/auth/start", {"userId": "ann", "provider": "claude_code\u0000"}),
]


@pytest.mark.parametrize(("path", "body"), BODIES, ids=[b[0] for b in BODIES])
async def test_a_nul_in_a_json_string_is_refused_422_and_nothing_is_stored(
    api: Api, path: str, body: dict[str, Any]
) -> None:
    response = await api.client.post(path, json=body, headers=api.headers())
    assert_error(response, 422, "invalid_input")
    assert (await api.client.get("/api/webhooks", headers=api.headers())).json()["webhooks"] == []
    assert [
        k["userId"]
        for k in (await api.client.get("/api/keys", headers=api.headers())).json()["keys"]
    ] == ["admin"]


async def test_a_nul_in_a_vms_command_or_its_run_is_refused_422_but_stdin_may_carry_one(
    agent_api: Api,
) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    for path, body in [
        ("exec", {"cmd": ["echo", "a\u0000b"]}),
        ("exec", {"cmd": ["env"], "env": {"A": "\u0000"}}),
        ("exec", {"cmd": ["pwd"], "cwd": "/tmp\u0000"}),
        ("runs", {"provider": "claude_code", "prompt": "hi\u0000"}),
        ("runs", {"provider": "claude_code", "prompt": "hi", "cwd": "/\u0000"}),
    ]:
        response = await api.client.post(
            f"/api/vms/{vm_id}/{path}", json=body, headers=api.headers()
        )
        error = assert_error(response, 422, "invalid_input")
        assert "NUL" in error["message"], error
    runs = await api.client.get(f"/api/vms/{vm_id}/runs", headers=api.headers())
    assert runs.json()["runs"] == []
    # Bytes for a command's stdin are not text anything stores: a NUL goes through.
    ran = await api.client.post(
        f"/api/vms/{vm_id}/exec",
        json={"cmd": ["od", "-An", "-tx1"], "stdin": "a\u0000b"},
        headers=api.headers(),
    )
    assert ran.status_code == 200, ran.text
    assert "61 00 62" in ran.text, ran.text
