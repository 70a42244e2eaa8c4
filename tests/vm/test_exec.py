"""``/api/vms/{id}/exec`` against a real CLI VM, over real HTTP: only what a VM shows.

The command runs in the guest under its agent; 50 MB of binary output crosses the VM's forward
and the controller with the sha256 the guest computed; a client that drops mid-stream resumes
with ``Last-Event-ID`` and loses nothing; ten commands run at once; a timeout ends the whole
process group in the guest. The routes' logic (who may, bad bodies, the cap, stdin, kill) is
tested in process in ``tests/integration/test_api_exec.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import hearth_cli
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api
from tests.vm.test_api import sqlite_only, user_key

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]
Event = tuple[int | None, str, dict[str, Any]]


async def cli_vm(api: Api, user: str) -> tuple[str, str]:
    """A ready CLI VM of ``user``'s and that user's key."""
    key = await user_key(api, user)
    async with api.client(key) as client:
        created = await client.post("/api/vms", json={})
    assert created.status_code == 201, created.text
    return created.json()["id"], key


async def events_of(
    client: httpx.AsyncClient, method: str, url: str, *, limit: int | None = None, **options: Any
) -> list[Event]:
    """The SSE events of a response (all of them, or the first ``limit``, then hang up)."""
    events: list[Event] = []
    async with aconnect_sse(client, method, url, **options) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append((int(sse.id) if sse.id else None, sse.event, sse.json()))
            if limit is not None and len(events) >= limit:
                break
    return events


def output(events: list[Event], kind: str) -> bytes:
    return b"".join(
        base64.b64decode(data["data"])
        if data.get("encoding") == "base64"
        else data["data"].encode()
        for _, event, data in events
        if event == kind
    )


def exit_of(events: list[Event]) -> dict[str, Any]:
    assert events[-1][1] == "exit", events[-3:]
    return events[-1][2]


async def sh(client: httpx.AsyncClient, vm_id: str, script: str) -> str:
    """Run ``sh -c script`` in the VM through the API; its stdout (it must exit 0)."""
    ran = await events_of(
        client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", script]}
    )
    assert exit_of(ran)["code"] == 0, output(ran, "stderr")
    return output(ran, "stdout").decode()


async def test_fifty_megabytes_of_output_arrive_with_the_sha256_the_guest_computed(
    controller: Api,
) -> None:
    vm_id, key = await cli_vm(controller, "ann")
    script = (
        "head -c 50000000 /dev/urandom > /tmp/out && sha256sum /tmp/out >&2 && cat /tmp/out"
        " && rm /tmp/out"
    )
    async with controller.client(key) as client:
        events = await events_of(
            client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", script]}
        )
    assert exit_of(events)["code"] == 0
    data = output(events, "stdout")
    assert len(data) == 50_000_000
    assert hashlib.sha256(data).hexdigest() == output(events, "stderr").decode().split()[0]


async def test_a_client_that_drops_mid_stream_resumes_and_loses_nothing(controller: Api) -> None:
    vm_id, key = await cli_vm(controller, "ann")
    script = "i=1; while [ $i -le 200 ]; do echo line$i; i=$((i+1)); sleep 0.01; done"
    async with controller.client(key) as client:
        first = await events_of(
            client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", script]}, limit=4
        )
    exec_id = first[0][2]["execId"]
    last_seen = first[-1][0]
    assert last_seen is not None
    async with controller.client(key) as client:
        rest = await events_of(
            client,
            "GET",
            f"/api/vms/{vm_id}/exec/{exec_id}/events",
            headers={"Last-Event-ID": str(last_seen)},
        )
    assert exit_of(rest)["code"] == 0
    lines = output(first + rest, "stdout").decode().splitlines()
    assert lines == [f"line{i}" for i in range(1, 201)]


async def test_ten_commands_run_at_once_in_one_vm(controller: Api) -> None:
    vm_id, key = await cli_vm(controller, "ann")
    async with controller.client(key) as client:

        async def run(index: int) -> list[Event]:
            script = f"sleep 1; echo done{index}"
            return await events_of(
                client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", script]}
            )

        results = await asyncio.gather(*(run(index) for index in range(10)))
    for index, events in enumerate(results):
        assert exit_of(events)["code"] == 0
        assert output(events, "stdout") == f"done{index}\n".encode()


async def test_a_timeout_ends_the_whole_process_group_in_the_guest(controller: Api) -> None:
    vm_id, key = await cli_vm(controller, "ann")
    url = f"/api/vms/{vm_id}/exec"
    async with controller.client(key) as client:
        events = await events_of(
            client,
            "POST",
            url,
            json={"cmd": ["sh", "-c", "sleep 300 & echo $!; wait"], "timeoutS": 2},
        )
        assert exit_of(events)["reason"] == "timeout"
        grandchild = output(events, "stdout").decode().strip()
        assert grandchild.isdigit()
        probe = await events_of(
            client, "POST", url, json={"cmd": ["sh", "-c", f"kill -0 {grandchild}"]}
        )
    assert exit_of(probe)["code"] != 0, "the backgrounded sleep outlived the timeout"


async def test_hearth_exec_prints_both_streams_and_exits_with_the_commands_status(
    controller: Api,
) -> None:
    vm_id, key = await cli_vm(controller, "ann")
    script = "echo to-out; echo to-err >&2; exit 7"
    env = {"HEARTH_URL": controller.url, "HEARTH_API_KEY": key}
    ran = await asyncio.to_thread(
        hearth_cli, "exec", vm_id, "--", "sh", "-c", script, env=env, timeout=300
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (7, "to-out\n", "to-err\n")
    timed_out = await asyncio.to_thread(
        hearth_cli, "exec", vm_id, "--timeout", "1", "--", "sleep", "60", env=env, timeout=300
    )
    assert timed_out.returncode == 124, timed_out.stderr
    refused = await asyncio.to_thread(
        hearth_cli, "exec", "vm-nope", "--", "true", env=env, timeout=300
    )
    assert refused.returncode == 125
    assert "not_found" in refused.stderr
