"""Heartbeats, in process on SQLite and PostgreSQL, over VMs whose agents are real processes on
loopback (``AgentBackend``), with a webhook receiver on loopback.

An agent that stops answering (SIGSTOP: its process lives, as a hung agent's would) makes its VM
``unhealthy`` and a signed ``vm.unhealthy`` reaches the receiver; an agent that answers again
(SIGCONT) makes it ``ready`` with ``vm.recovered``; one that stays silent past the deadline fails
the VM and its process is gone. Each VM shows the agent version it reported, counted per version
in ``/metrics`` and marked outdated below ``HEARTH_AGENT_MIN_VERSION``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.events.signing import verify
from hearth_agent import __version__ as AGENT_VERSION
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver

EVENTS = ["vm.unhealthy", "vm.recovered", "vm.failed"]


@pytest.fixture
def beat_settings(api_settings: Settings) -> Settings:
    """Fast heartbeats; the deadline long enough to see a recovery first; agents of this
    build are below the minimum version."""
    return api_settings.with_overrides(
        webhook_allow_private=True,
        webhook_backoff_s=0.05,
        heartbeat_interval_s=0.1,
        heartbeat_timeout_s=1.0,  # a loaded machine still answers a loopback /health in time
        heartbeat_misses=2,
        unhealthy_deadline_s=4.0,
        agent_min_version="99.0",
    )


@pytest.fixture
async def beating(
    beat_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    async with running_api(beat_settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


async def wait_until(
    api: Api, vm_id: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 15
) -> dict[str, Any]:
    """The VM as the API shows it, once ``check`` holds."""
    async with asyncio.timeout(timeout_s):
        while True:
            vm: dict[str, Any] = (
                await api.client.get(f"/api/vms/{vm_id}", headers=api.headers())
            ).json()
            if check(vm):
                return vm
            await asyncio.sleep(0.05)


async def new_vm(api: Api) -> str:
    created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    assert created.status_code == 201, created.text
    vm_id: str = created.json()["id"]
    return vm_id


async def test_a_silent_agent_makes_its_vm_unhealthy_and_an_answer_makes_it_ready_again(
    beating: Api, receiver: WebhookReceiver
) -> None:
    api = beating
    hook = await api.client.post(
        "/api/webhooks", json={"url": receiver.url, "events": EVENTS}, headers=api.headers()
    )
    secret = hook.json()["secret"]
    vm_id = await new_vm(api)
    agent = api.backend.agent(vm_id)  # type: ignore[attr-defined]
    vm = await wait_until(api, vm_id, lambda vm: vm["agentVersion"] is not None)
    assert vm["agentVersion"] == AGENT_VERSION
    assert vm["agentOutdated"] is True
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        (unhealthy,) = await receiver.wait_for("vm.unhealthy", timeout_s=10)
        assert verify(secret, unhealthy.body, unhealthy.headers["x-hearth-signature"])
        assert unhealthy.event["vmId"] == vm_id
        assert unhealthy.event["data"]["misses"] == 2
        vm = (await api.client.get(f"/api/vms/{vm_id}", headers=api.headers())).json()
        assert vm["status"] == "unhealthy"
        assert "missed 2 heartbeats" in vm["error"]
        # Nothing runs in an unhealthy VM; the refusal names its status.
        refused = await api.client.post(
            f"/api/vms/{vm_id}/exec", json={"cmd": ["true"]}, headers=api.headers()
        )
        assert "unhealthy" in assert_error(refused, 409, "conflict")["message"]
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    (recovered,) = await receiver.wait_for("vm.recovered", timeout_s=10)
    assert recovered.event["vmId"] == vm_id
    assert recovered.event["data"]["unhealthyS"] >= 0
    vm = await wait_until(api, vm_id, lambda vm: vm["status"] == "ready")
    assert vm["error"] is None
    assert not [r for r in receiver.received if r.headers["x-hearth-event"] == "vm.failed"]
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert f'hearth_vm_agent_versions{{version="{AGENT_VERSION}"}} 1.0' in metrics
    assert "hearth_vm_agents_outdated 1.0" in metrics
    assert 'hearth_vms{status="unhealthy"} 0.0' in metrics
    assert 'hearth_vm_heartbeats_total{result="missed"}' in metrics


async def test_an_agent_silent_past_the_deadline_fails_its_vm_and_nothing_is_left(
    beating: Api, receiver: WebhookReceiver
) -> None:
    api = beating
    await api.client.post(
        "/api/webhooks", json={"url": receiver.url, "events": EVENTS}, headers=api.headers()
    )
    vm_id = await new_vm(api)
    backend: AgentBackend = api.backend  # type: ignore[assignment]
    os.kill(backend.agent(vm_id).pid, signal.SIGSTOP)
    await receiver.wait_for("vm.unhealthy", timeout_s=10)
    (failed,) = await receiver.wait_for("vm.failed", timeout_s=15)
    assert failed.event["data"]["stage"] == "unhealthy"
    assert "HEARTH_UNHEALTHY_DEADLINE_S" in failed.event["data"]["error"]
    vm = await wait_until(api, vm_id, lambda vm: vm["status"] == "failed")
    assert "did not answer" in vm["error"]
    assert vm_id not in backend.running_agents()
    assert vm_id not in backend.running
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_vm_failures_total{stage="unhealthy"} 1.0' in metrics


async def test_without_a_minimum_version_no_agent_is_outdated(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    settings = api_settings.with_overrides(heartbeat_interval_s=0.1)
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        vm_id = await new_vm(api)
        vm = await wait_until(api, vm_id, lambda vm: vm["agentVersion"] is not None)
        assert vm["agentOutdated"] is False
        listed = (await api.client.get("/api/vms", headers=api.headers())).json()["vms"]
        assert [(v["id"], v["agentVersion"]) for v in listed] == [(vm_id, AGENT_VERSION)]
        metrics = (await api.client.get("/metrics", headers=api.headers())).text
        assert "hearth_vm_agents_outdated 0.0" in metrics
