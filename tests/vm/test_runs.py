"""Runs of the real vendor CLIs in a real CLI VM, against stand-ins for the model providers.

Exactly the production path: the CLI image (with the test CA added by ``hearth image trust-ca``,
the one thing that differs from production), a CLI VM whose only way out is its egress path,
the credential captured and delivered by the auth flow's own code, and ``POST …/runs`` starting
the CLI's headless mode. Each CLI dials its provider's real host name through the VM's egress
proxy, which the test pins (``HEARTH_EGRESS_PINS``) to a loopback stand-in speaking that
provider's streaming wire format with a certificate of the test CA. The stand-in checks the
bearer is the access token that was delivered.

Per vendor, in one VM: an answer streams as ``message.delta`` in order and completes with usage;
``resume`` continues that conversation (the same session id); a reconnect with
``Last-Event-ID`` loses no event; a cancel mid-stream leaves no CLI process in the VM within
2 s. And ``hearth run`` streams claude's answer on a terminal. (How each CLI's 429 and 401 end,
``rate_limited`` and ``not_logged_in``, is shown on the host with the same CLIs, stand-ins,
egress proxy and parsers: ``tests/integration/test_standins_host.py``.)
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import aconnect_sse

from hearth.bench.standins.ca import TestCA
from hearth.bench.standins.documents import sample_document
from hearth.bench.standins.scenarios import Script
from hearth.bench.standins.server import StandInServer, egress_pins
from hearth.bench.standins.standin import ProviderStandIn
from hearth.bench.standins.vendors import VENDORS
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth_agent.wire import Provider
from tests.conftest import hearth_cli
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_owned
from tests.vm.test_api import sqlite_only, user_key
from tests.vm.test_exec import events_of, exit_of, output

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]

ANSWER = "Hello from the stand-in. The answer is 42."
# Under TCG a CLI takes seconds to start (claude is a 380 MB native binary).
RUN_DEADLINE_S = 300.0
Event = tuple[int, str, dict[str, Any]]


@dataclass
class StandIns:
    """One running stand-in per vendor, each with the token it expects."""

    by_provider: dict[Provider, ProviderStandIn]
    servers: dict[Provider, StandInServer]

    def pins(self) -> str:
        """``HEARTH_EGRESS_PINS``: every provider API host to its stand-in."""
        return egress_pins(self.servers)


@pytest.fixture
def documents() -> dict[Provider, dict[str, object]]:
    """A credential document per vendor, with tokens of this test's own."""
    marker = uuid.uuid4().hex[:12]
    return {provider: sample_document(provider.value, marker) for provider in VENDORS}


@pytest.fixture
async def standins(
    test_ca: TestCA, documents: dict[Provider, dict[str, object]], tmp_path: Path
) -> AsyncIterator[StandIns]:
    async with AsyncExitStack() as stack:
        by_provider: dict[Provider, ProviderStandIn] = {}
        servers: dict[Provider, StandInServer] = {}
        for provider, vendor in VENDORS.items():
            standin = vendor.standin(expected_token=vendor.access_token(documents[provider]))
            leaf = test_ca.issue(standin.hosts, tmp_path / "tls", stem=provider.value)
            server = StandInServer(standin.app(), leaf=leaf)
            await stack.enter_async_context(server)
            by_provider[provider], servers[provider] = standin, server
        yield StandIns(by_provider, servers)


@pytest.fixture
async def controller(
    database_url: str,
    minimal_image: ImageDir,
    trusted_cli_image: ImageDir,
    standins: StandIns,
    tmp_path: Path,
    vm_state_dir: Path,
) -> AsyncIterator[Api]:
    """A controller whose CLI VMs boot the test image, their provider hosts pinned."""
    settings = Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_EGRESS_PINS": standins.pins(),
        }
    )
    async for api in serve_owned(
        settings,
        minimal_image=minimal_image,
        vm_state_dir=vm_state_dir,
        cli_image=trusted_cli_image,
    ):
        yield api


async def logged_in_vm(
    api: Api, user: str, documents: dict[Provider, dict[str, object]]
) -> tuple[str, str]:
    """A CLI VM of ``user``'s, every vendor's login captured and delivered by the auth flow."""
    key = await user_key(api, user)
    async with api.client(key) as client:
        created = await client.post("/api/vms", json={"memMib": 2048})
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    for provider, document in documents.items():
        await api.ctl.credentials.capture(user, provider.value, json.dumps(document).encode())
        await api.ctl.delivery.deliver(user, provider.value, vm_id)
    return vm_id, key


async def run_events(
    api: Api,
    key: str,
    vm_id: str,
    run_id: str,
    *,
    after: int = 0,
    limit: int | None = None,
    until: str | None = None,
) -> list[Event]:
    """The run's events after ``after``: all, the first ``limit``, or up to one of ``until``."""
    events: list[Event] = []
    async with api.client(key) as client:
        client.timeout = RUN_DEADLINE_S
        async with aconnect_sse(
            client,
            "GET",
            f"/api/vms/{vm_id}/runs/{run_id}/events",
            headers={"Last-Event-ID": str(after)},
        ) as source:
            assert source.response.status_code == 200, await source.response.aread()
            async for sse in source.aiter_sse():
                events.append((int(sse.id), sse.event, sse.json()))
                if limit is not None and len(events) >= limit:
                    break
                if until is not None and sse.event == until:
                    break
    return events


async def start_run(
    api: Api, key: str, vm_id: str, provider: Provider, prompt: str, **body: str
) -> str:
    async with api.client(key) as client:
        started = await client.post(
            f"/api/vms/{vm_id}/runs", json={"provider": provider.value, "prompt": prompt, **body}
        )
    assert started.status_code == 202, started.text
    run_id: str = started.json()["id"]
    return run_id


def described(events: list[Event]) -> str:
    return "\n".join(f"{i} {kind} {json.dumps(data)[:300]}" for i, kind, data in events)


async def cli_processes(api: Api, key: str, vm_id: str) -> str:
    """The vendor CLIs' processes running in the VM (``ps`` through exec)."""
    script = "ps -eo pid,args | grep -E 'claude|codex|gemini' | grep -v grep || true"
    async with api.client(key) as client:
        events = await events_of(
            client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", script]}
        )
    assert exit_of(events)["code"] == 0
    return output(events, "stdout").decode()


@pytest.mark.parametrize("provider", list(VENDORS), ids=[p.value for p in VENDORS])
async def test_each_vendor_cli_runs_through_hearth_against_its_stand_in(
    controller: Api,
    standins: StandIns,
    documents: dict[Provider, dict[str, object]],
    provider: Provider,
) -> None:
    vm_id, key = await logged_in_vm(controller, "ann", {provider: documents[provider]})
    standin = standins.by_provider[provider]
    token = VENDORS[provider].access_token(documents[provider])

    # An answer, streamed in order, completed with usage.
    run_id = await start_run(controller, key, vm_id, provider, "Say hello")
    events = await asyncio.wait_for(run_events(controller, key, vm_id, run_id), RUN_DEADLINE_S)
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "run.started"
    assert kinds[-1] == "run.completed", described(events)
    text = "".join(data["text"] for _, kind, data in events if kind == "message.delta")
    assert text == ANSWER, described(events)
    assert events[-1][2]["usage"]["outputTokens"] > 0
    assert standin.model_requests, "the CLI never reached its stand-in"
    assert standin.bearers() <= {token, None}, "a bearer other than the delivered token came"
    assert token in standin.bearers()

    # ``resume`` continues the CLI's own conversation: the same session id comes back.
    session_id = events[-1][2]["sessionId"]
    assert session_id
    resumed_id = await start_run(controller, key, vm_id, provider, "And again?", resume=session_id)
    resumed = await asyncio.wait_for(run_events(controller, key, vm_id, resumed_id), RUN_DEADLINE_S)
    assert resumed[-1][1] == "run.completed", described(resumed)
    assert resumed[-1][2]["sessionId"] == session_id

    # A client that drops after three events and comes back loses nothing.
    head = await run_events(controller, key, vm_id, run_id, limit=3)
    rest = await run_events(controller, key, vm_id, run_id, after=head[-1][0])
    assert head + rest == events

    # Cancelled mid-stream: no CLI process is left in the VM 2 s later.
    standin.script = Script(chunk_delay=2.0)
    slow_id = await start_run(controller, key, vm_id, provider, "Say hello slowly")
    first = await asyncio.wait_for(
        run_events(controller, key, vm_id, slow_id, until="message.delta"), RUN_DEADLINE_S
    )
    assert first[-1][1] == "message.delta", described(first)
    async with controller.client(key) as client:
        cancelled = await client.post(f"/api/vms/{vm_id}/runs/{slow_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    ended = await asyncio.wait_for(run_events(controller, key, vm_id, slow_id), 60)
    assert (ended[-1][1], ended[-1][2]["code"]) == ("run.failed", "cancelled")
    await asyncio.sleep(2.0)
    assert await cli_processes(controller, key, vm_id) == ""


async def test_hearth_run_streams_the_answer_and_exits_with_the_runs_status(
    controller: Api, documents: dict[Provider, dict[str, object]], standins: StandIns
) -> None:
    provider = Provider.CLAUDE_CODE
    vm_id, key = await logged_in_vm(controller, "bob", {provider: documents[provider]})
    env = {"HEARTH_URL": controller.url, "HEARTH_API_KEY": key}
    ran = await asyncio.to_thread(
        hearth_cli, "run", vm_id, "--provider", provider.value, "Say hello", env=env, timeout=600
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == ANSWER
    assert "completed" in ran.stderr
    never = await asyncio.to_thread(
        hearth_cli, "run", vm_id, "--provider", "codex", "Say hello", env=env, timeout=600
    )
    assert never.returncode == 125
    assert "not_logged_in" in never.stderr
