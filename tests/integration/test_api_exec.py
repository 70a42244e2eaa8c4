"""``/api/vms/{id}/exec`` in process, on SQLite and PostgreSQL: the controller's routes over VMs
whose agents are real processes on loopback (``AgentBackend``), so every command really runs.

What only a VM shows (a command in the guest, 50 MB through the VM's forward, a client that
drops mid-stream over real HTTP) is in ``tests/vm/test_exec.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, aconnect_sse

from hearth.config import Settings
from hearth_agent.exec_routes import KEEPALIVE_S as AGENT_KEEPALIVE_S
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api, served
from tests.integration.conftest import AgentLauncher

EXEC_CAP = 3


@pytest.fixture
def exec_settings(api_settings: Settings) -> Settings:
    """The API's settings with a small per-VM cap on commands."""
    return api_settings.with_overrides(exec_max_per_vm=EXEC_CAP)


@pytest.fixture
async def api_agents(
    exec_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller in process over VMs with real agents."""
    async with running_api(exec_settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


async def new_vm(api: Api, user: str, vm_type: str = "cli") -> tuple[str, dict[str, str]]:
    """A ready VM of ``user``'s (a Browser VM made with the admin key: only it may), and that
    user's headers."""
    headers = api.headers(await api.user_key(user))
    maker = headers if vm_type == "cli" else api.headers()
    body = {"userId": user, "vmType": vm_type}
    created = await api.client.post("/api/vms", json=body, headers=maker)
    assert created.status_code == 201, created.text
    return created.json()["id"], headers


async def stream(
    api: Api, method: str, url: str, headers: dict[str, str], **options: Any
) -> list[tuple[int | None, str, dict[str, Any]]]:
    """Every SSE event of a response: (id, type, data)."""
    events = []
    async with aconnect_sse(api.client, method, url, headers=headers, **options) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append((int(sse.id) if sse.id else None, sse.event, sse.json()))
    return events


@contextlib.asynccontextmanager
async def exec_over_http(
    api: Api, vm_id: str, body: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[EventSource]:
    """The command's event stream read by httpx-sse over a real HTTP connection to the API."""
    async with (
        served(api.app) as url,
        httpx.AsyncClient(base_url=url) as client,
        aconnect_sse(
            client, "POST", f"/api/vms/{vm_id}/exec", json=body, headers=headers
        ) as source,
    ):
        yield source


def output(events: list[tuple[int | None, str, dict[str, Any]]], kind: str) -> bytes:
    """The bytes of every ``kind`` chunk, in order."""
    chunks = []
    for _, event, data in events:
        if event == kind:
            encoded = data["data"]
            chunks.append(
                base64.b64decode(encoded)
                if data.get("encoding") == "base64"
                else encoded.encode("utf-8")
            )
    return b"".join(chunks)


def exit_of(events: list[tuple[int | None, str, dict[str, Any]]]) -> dict[str, Any]:
    """The one exit event's data, which must come last."""
    exits = [data for _, event, data in events if event == "exit"]
    assert len(exits) == 1, events
    assert events[-1][1] == "exit"
    return exits[0]


async def until_exited(api: Api, vm_id: str, exec_id: str, headers: dict[str, str]) -> None:
    for _ in range(400):
        state = await api.client.get(f"/api/vms/{vm_id}/exec/{exec_id}", headers=headers)
        assert state.status_code == 200, state.text
        if state.json()["exit"] is not None:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"exec {exec_id} did not end")


async def test_a_command_streams_its_output_per_stream_in_order_then_its_exit(
    api_agents: Api,
) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3"
    events = await stream(
        api, "POST", f"/api/vms/{vm_id}/exec", headers, json={"cmd": ["sh", "-c", script]}
    )
    first_id, first, started = events[0]
    assert (first_id, first) == (0, "started")
    assert set(started) == {"execId", "pid"}
    assert output(events, "stdout") == b"out1\nout2\nout3\n"
    assert output(events, "stderr") == b"err1\nerr2\nerr3\n"
    ended = exit_of(events)
    assert ended["code"] == 3
    assert ended["signal"] is None
    assert ended["reason"] == "exited"
    assert ended["durationMs"] >= 0
    ids = [event_id for event_id, _, _ in events[1:]]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_binary_output_arrives_whole_as_base64(api_agents: Api) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    program = (
        "import hashlib, os, sys\n"
        "data = os.urandom(300_000) + b'\\xff\\xfe'\n"
        "sys.stdout.buffer.write(data); sys.stdout.flush()\n"
        "sys.stderr.write(hashlib.sha256(data).hexdigest())\n"
    )
    events = await stream(
        api, "POST", f"/api/vms/{vm_id}/exec", headers, json={"cmd": ["python3", "-c", program]}
    )
    assert exit_of(events)["code"] == 0
    data = output(events, "stdout")
    assert len(data) == 300_002
    assert hashlib.sha256(data).hexdigest() == output(events, "stderr").decode()


async def test_wait_false_then_events_resume_after_the_last_id_seen(api_agents: Api) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    started = await api.client.post(
        f"/api/vms/{vm_id}/exec?wait=false",
        json={"cmd": ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done"]},
        headers=headers,
    )
    assert started.status_code == 202, started.text
    exec_id = started.json()["execId"]
    await until_exited(api, vm_id, exec_id, headers)
    url = f"/api/vms/{vm_id}/exec/{exec_id}/events"
    everything = await stream(api, "GET", url, headers)
    assert output(everything, "stdout") == b"".join(b"line%d\n" % i for i in range(1, 6))
    # Resuming after any id gives exactly the events after it, by header or by query.
    middle = everything[len(everything) // 2][0]
    assert middle is not None
    rest = [event for event in everything if event[0] is not None and event[0] > middle]
    by_header = await stream(api, "GET", url, {**headers, "Last-Event-ID": str(middle)})
    assert by_header == rest
    assert await stream(api, "GET", f"{url}?after={middle}", headers) == rest
    # An id that is not ASCII digits ("²" passes str.isdigit, not int) is refused, not a 500.
    for bad in (b"\xb2", b"-1", b"1e3", b"abc", str(2**63).encode()):
        refused = await api.client.get(url, headers={**headers, "Last-Event-ID": bad})
        assert_error(refused, 422, "invalid_input")
    assert_error(
        await api.client.get(f"{url}?after={2**63}", headers=headers), 422, "invalid_input"
    )


async def test_stdin_kill_and_timeout_end_the_whole_group(api_agents: Api) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    base = f"/api/vms/{vm_id}/exec"

    started = await api.client.post(
        f"{base}?wait=false", json={"cmd": ["cat"], "stdinOpen": True}, headers=headers
    )
    exec_id = started.json()["execId"]
    fed = await api.client.post(
        f"{base}/{exec_id}/stdin", json={"data": "to cat\n", "eof": True}, headers=headers
    )
    assert fed.status_code == 200, fed.text
    events = await stream(api, "GET", f"{base}/{exec_id}/events", headers)
    assert output(events, "stdout") == b"to cat\n"
    assert exit_of(events)["code"] == 0

    started = await api.client.post(
        f"{base}?wait=false", json={"cmd": ["sh", "-c", "sleep 60 & sleep 60"]}, headers=headers
    )
    exec_id = started.json()["execId"]
    killed = await api.client.post(f"{base}/{exec_id}/kill", json={}, headers=headers)
    assert killed.status_code == 200, killed.text
    assert killed.json()["signalled"] is True
    ended = exit_of(await stream(api, "GET", f"{base}/{exec_id}/events", headers))
    assert (ended["reason"], ended["signal"]) == ("killed", "SIGKILL")

    events = await stream(
        api, "POST", base, headers, json={"cmd": ["sh", "-c", "sleep 60 & sleep 60"], "timeoutS": 1}
    )
    assert exit_of(events)["reason"] == "timeout"


async def test_who_may_run_what_and_where(api_agents: Api) -> None:
    api = api_agents
    vm_id, ann = await new_vm(api, "ann")
    bob = api.headers(await api.user_key("bob"))
    body = {"cmd": ["true"]}
    # Another user's VM does not exist for them; an admin may run commands anywhere.
    assert_error(
        await api.client.post(f"/api/vms/{vm_id}/exec", json=body, headers=bob), 404, "not_found"
    )
    as_admin = await stream(api, "POST", f"/api/vms/{vm_id}/exec", api.headers(), json=body)
    assert exit_of(as_admin)["code"] == 0
    # A paused VM that does not resume by itself, and a Browser VM, run nothing: 409 naming why
    # (with autoResume, the default, the call resumes it: tests/integration/test_api_lifetimes).
    no_auto = {"autoResume": False}
    assert (await api.client.patch(f"/api/vms/{vm_id}", json=no_auto, headers=ann)).is_success
    assert (await api.client.post(f"/api/vms/{vm_id}/pause", headers=ann)).status_code == 200
    refused = assert_error(
        await api.client.post(f"/api/vms/{vm_id}/exec", json=body, headers=ann), 409, "conflict"
    )
    assert "paused" in refused["message"]
    browser_id, _ = await new_vm(api, "bob", "browser")
    refused = assert_error(
        await api.client.post(f"/api/vms/{browser_id}/exec", json=body, headers=bob),
        409,
        "conflict",
    )
    assert "CLI VMs" in refused["message"]
    # An exec id the VM never had.
    assert (await api.client.post(f"/api/vms/{vm_id}/resume", headers=ann)).status_code == 200
    missing = await api.client.get(f"/api/vms/{vm_id}/exec/nope/events", headers=ann)
    assert_error(missing, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cmd": []}, "cmd"),
        ({"cmd": "ls -l"}, "cmd"),
        ({"cmd": [""]}, "cmd"),
        ({"cmd": ["ls", 3]}, "cmd"),
        ({"cmd": ["ls"], "timeoutS": 0}, "timeoutS"),
        ({"cmd": ["ls"], "env": {"1BAD": "x"}}, "env"),
        ({"cmd": ["ls"], "shell": True}, "shell"),
    ],
)
async def test_a_bad_body_is_422_naming_the_field_and_runs_nothing(
    api_agents: Api, body: dict[str, Any], field: str
) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    error = assert_error(
        await api.client.post(f"/api/vms/{vm_id}/exec", json=body, headers=headers),
        422,
        "invalid_input",
    )
    assert field in error["message"]


async def test_a_timeout_past_the_operators_limit_is_422_naming_it_and_runs_nothing(
    exec_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # HEARTH_EXEC_TIMEOUT_S is the default and the most: asked for longer, the command ran
    # with the longer timeout (the schema's 6 h were the only bound).
    settings = exec_settings.with_overrides(exec_timeout_s=60.0)
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        vm_id, headers = await new_vm(api, "ann")
        url = f"/api/vms/{vm_id}/exec?wait=false"
        over = await api.client.post(url, json={"cmd": ["true"], "timeoutS": 61}, headers=headers)
        assert "HEARTH_EXEC_TIMEOUT_S" in assert_error(over, 422, "invalid_input")["message"]
        most = await api.client.post(url, json={"cmd": ["true"], "timeoutS": 60}, headers=headers)
        assert most.status_code == 202, most.text
        state = await api.client.get(
            f"/api/vms/{vm_id}/exec/{most.json()['execId']}", headers=headers
        )
        assert state.json()["timeoutS"] == 60


async def test_a_cwd_the_vm_lacks_is_422_from_the_agent(api_agents: Api) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    refused = await api.client.post(
        f"/api/vms/{vm_id}/exec", json={"cmd": ["true"], "cwd": "/no/such/dir"}, headers=headers
    )
    error = assert_error(refused, 422, "invalid_input")
    assert "/no/such/dir" in error["message"]


async def test_commands_past_the_per_vm_cap_are_429_until_one_ends(api_agents: Api) -> None:
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    base = f"/api/vms/{vm_id}/exec"
    running = []
    for _ in range(EXEC_CAP):
        started = await api.client.post(
            f"{base}?wait=false", json={"cmd": ["sleep", "60"]}, headers=headers
        )
        assert started.status_code == 202, started.text
        running.append(started.json()["execId"])
    over = await api.client.post(f"{base}?wait=false", json={"cmd": ["true"]}, headers=headers)
    assert_error(over, 429, "too_many_running")
    await api.client.post(f"{base}/{running[0]}/kill", headers=headers)
    await until_exited(api, vm_id, running[0], headers)
    again = await api.client.post(f"{base}?wait=false", json={"cmd": ["true"]}, headers=headers)
    assert again.status_code == 202, again.text
    for exec_id in running[1:]:
        await api.client.post(f"{base}/{exec_id}/kill", headers=headers)


async def test_the_openapi_documents_the_exec_routes(api_agents: Api) -> None:
    document = (await api_agents.client.get("/openapi.json")).json()
    post = document["paths"]["/api/vms/{vm_id}/exec"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert {"202", "404", "409", "422", "429"} <= set(post["responses"])
    for path in ("/events", "/stdin", "/kill", ""):
        assert f"/api/vms/{{vm_id}}/exec/{{exec_id}}{path}" in document["paths"]


@pytest.mark.parametrize(
    "script",
    ["while :; do echo tick; sleep 0.1; done", "echo tick; sleep 60"],
    ids=["busy", "quiet"],
)
async def test_a_revoked_key_stops_reading_a_command_it_was_following(
    api_agents: Api, script: str
) -> None:
    # A long command, its output coming or not; the key that started it is revoked: its stream
    # ends within a few seconds, as its next request would be refused (a quiet one's stream
    # stayed open until the command's next output).
    api = api_agents
    vm_id, _ = await new_vm(api, "ann")
    headers = api.headers(await api.user_key("ann"))
    keys = (await api.client.get("/api/keys?userId=ann", headers=api.headers())).json()["keys"]
    body = {"cmd": ["sh", "-c", script], "timeoutS": 60}
    async with exec_over_http(api, vm_id, body, headers) as source:
        events = source.aiter_sse()
        async with asyncio.timeout(10):
            while (await anext(events)).event != "stdout":
                pass
        revoked = await api.client.delete(f"/api/keys/{keys[-1]['id']}", headers=api.headers())
        assert revoked.status_code == 200, revoked.text
        async with asyncio.timeout(5):  # the stream ends (the command would run a minute)
            after = [event.event async for event in events]
        assert "exit" not in after


async def test_a_quiet_commands_stream_carries_keepalives_that_clients_skip(
    api_agents: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that cuts idle connections must not cut a command that prints nothing a while.
    # httpx-sse, as many clients, hands out an event at every blank line once it has seen an
    # id, data or not: a keepalive must not end in one, or the reader gets an empty event.
    monkeypatch.setattr("hearth.api.streams.KEEPALIVE_S", 0.2)
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    body = {"cmd": ["sh", "-c", "echo hi; sleep 1; echo bye"]}
    answer = await api.client.post(f"/api/vms/{vm_id}/exec", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert b": keepalive\n" in answer.content
    async with exec_over_http(api, vm_id, body, headers) as source:
        async with asyncio.timeout(20):
            events = [(event.event, event.data) async for event in source.aiter_sse()]
    assert [kind for kind, _ in events][-1] == "exit", events
    assert all(data and json.loads(data) is not None for _, data in events), events


async def test_a_command_quiet_past_the_agents_keepalive_streams_on_to_its_exit(
    api_agents: Api,
) -> None:
    # The agent, too, sends a keepalive after 15 s without an event; the controller reading
    # its stream took it for a broken event (a terminal left idle a minute ended, its shell
    # killed, after four of them in a row).
    api = api_agents
    vm_id, headers = await new_vm(api, "ann")
    quiet_s = AGENT_KEEPALIVE_S + 1.5
    body = {"cmd": ["sh", "-c", f"echo hi; sleep {quiet_s}; echo bye"]}
    url = f"/api/vms/{vm_id}/exec"
    events = await stream(api, "POST", url, headers, json=body, timeout=quiet_s + 30)
    assert [kind for _, kind, _ in events] == ["started", "stdout", "stdout", "exit"], events
    assert exit_of(events)["code"] == 0
