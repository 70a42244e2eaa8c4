"""VM health in real VMs (QEMU, the minimal image), told to a webhook receiver on loopback.

The guest's agent stopped (SIGSTOP from inside the guest, its process alive, as a hung agent)
makes the VM ``unhealthy`` and a signed ``vm.unhealthy`` arrives; once it runs again,
``vm.recovered``. A VM whose QEMU is killed reaches the receiver as a signed ``vm.failed`` within
5 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.events.signing import verify
from hearth.images.manifest import ImageDir
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_owned
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.vm]
EVENTS = ["vm.unhealthy", "vm.recovered", "vm.failed"]
# Run detached from the agent (a session of its own), so the agent it stops cannot take it
# along; the exec waits a second so that its end, which kills its process group, comes after
# the detached shell left that group.
STALL_AGENT = (
    "setsid sh -c 'sleep 1; pid=$(cat /opt/hearth/agent/agent.pid); kill -STOP $pid; "
    "sleep 6; kill -CONT $pid' </dev/null >/dev/null 2>&1 & sleep 1"
)


@pytest.fixture
async def watched(
    tmp_path: Path, minimal_image: ImageDir, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller with heartbeats every 0.5 s (two misses: unhealthy) and loopback webhooks."""
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_WEBHOOK_ALLOW_PRIVATE": "1"}
    ).with_overrides(
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=1.0,
        heartbeat_misses=2,
        webhook_backoff_s=0.05,
    )
    async for api in serve_owned(settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir):
        yield api


async def hooked(api: Api, receiver: WebhookReceiver) -> str:
    """A webhook for the VM health events; its secret."""
    async with api.client() as admin:
        hook = await admin.post("/api/webhooks", json={"url": receiver.url, "events": EVENTS})
    assert hook.status_code == 201, hook.text
    secret: str = hook.json()["secret"]
    return secret


async def new_vm(api: Api) -> dict[str, Any]:
    async with api.client() as admin:
        created = await admin.post("/api/vms", json={"userId": "ann"})
    assert created.status_code == 201, created.text
    vm: dict[str, Any] = created.json()
    return vm


async def test_a_stalled_agent_is_told_unhealthy_then_recovered(
    watched: Api, receiver: WebhookReceiver
) -> None:
    secret = await hooked(watched, receiver)
    vm = await new_vm(watched)
    async with watched.client() as admin:
        ran = await admin.post(f"/api/vms/{vm['id']}/exec", json={"cmd": ["sh", "-c", STALL_AGENT]})
    assert ran.status_code == 200, ran.text
    (unhealthy,) = await receiver.wait_for("vm.unhealthy", timeout_s=20)
    assert verify(secret, unhealthy.body, unhealthy.headers["x-hearth-signature"])
    assert unhealthy.event["vmId"] == vm["id"]
    (recovered,) = await receiver.wait_for("vm.recovered", timeout_s=30)
    assert verify(secret, recovered.body, recovered.headers["x-hearth-signature"])
    async with watched.client() as admin:
        shown = (await admin.get(f"/api/vms/{vm['id']}")).json()
    assert shown["status"] == "ready"
    assert not [r for r in receiver.received if r.headers["x-hearth-event"] == "vm.failed"]


async def test_a_killed_qemu_reaches_the_webhook_signed_within_five_seconds(
    watched: Api, receiver: WebhookReceiver
) -> None:
    secret = await hooked(watched, receiver)
    vm = await new_vm(watched)
    pid = watched.ctl.vms.live_vm(vm["id"]).pid
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    (failed,) = await receiver.wait_for("vm.failed", timeout_s=5)
    assert time.monotonic() - killed < 5
    assert verify(secret, failed.body, failed.headers["x-hearth-signature"])
    assert failed.event["vmId"] == vm["id"]
    assert failed.event["data"]["stage"] == "running"
