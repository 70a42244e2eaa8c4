"""Live agent updates in real VMs (QEMU, the minimal image, hearth-init restarting the agent).

A build stamped 0.1.1 replaces 0.1.0 in a running VM: the VM reports 0.1.1, its token still
opens it and the credential delivered before is intact. A build whose agent crashes at start is
rolled back by the VM itself: back on 0.1.0 and healthy, and a signed ``agent.update_failed``
reaches a webhook receiver on loopback. A rollout over four VMs with ``maxUnavailable: 1`` never
has two updating at once; once all four took it, the image carries it too (a private copy of the
minimal image here): the warm pool's VM is replaced, and a new VM, restored from a template
rebuilt on the changed image, runs 0.1.1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hearth.agent_bundle import AgentBundle
from hearth.agent_client import AgentClient
from hearth.bench.standins.documents import sample_document
from hearth.config import Settings
from hearth.events.signing import verify
from hearth.images.agent_install import verify_image
from hearth.images.layout import agent_sources, build_payload
from hearth.images.manifest import ImageDir
from hearth.vm.types import VmType
from hearth_agent import __version__ as BASE_VERSION
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, linked_copy, serve_owned
from tests.vm.test_api import until_pool_holds
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.vm]
NEW_VERSION = "0.1.1"
# Under TCG a restarted agent takes seconds to import and listen; the VM's own deadline.
DEADLINE_S = 25.0
# A pool refill that has to build its template first: a cold boot and a snapshot under TCG.
POOL_WAIT_S = 300.0
CRASHING_MAIN = b'"""A build that cannot start."""\nimport sys\n\nsys.exit(3)\n'


def crashing_bundle() -> AgentBundle:
    """0.1.1 whose ``python3 -m hearth_agent`` exits with status 3 at once."""
    return AgentBundle.build(
        version=NEW_VERSION, files={**agent_sources(), "__main__.py": CRASHING_MAIN}
    )


async def served(
    tmp_path: Path,
    minimal_image: ImageDir,
    vm_state_dir: Path,
    bundle: AgentBundle,
    **overrides: object,
) -> AsyncIterator[Api]:
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_WEBHOOK_ALLOW_PRIVATE": "1"}
    ).with_overrides(agent_update_deadline_s=DEADLINE_S, webhook_backoff_s=0.05, **overrides)
    async for api in serve_owned(
        settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir, agent_bundle=bundle
    ):
        yield api


@pytest.fixture
async def updating(
    tmp_path: Path, minimal_image: ImageDir, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller whose agent build is stamped 0.1.1."""
    bundle = AgentBundle.build(version=NEW_VERSION)
    async for api in served(tmp_path, minimal_image, vm_state_dir, bundle):
        yield api


@pytest.fixture
async def rolling_out(
    tmp_path: Path, minimal_image: ImageDir, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller whose agent build is stamped 0.1.1, on a private copy of the minimal image,
    with a warm pool of one CLI VM."""
    image = linked_copy(minimal_image, tmp_path / "image")
    bundle = AgentBundle.build(version=NEW_VERSION)
    async for api in served(tmp_path, image, vm_state_dir, bundle, pool_cli=1):
        yield api


@pytest.fixture
async def crashing(
    tmp_path: Path, minimal_image: ImageDir, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller whose agent build cannot start."""
    async for api in served(tmp_path, minimal_image, vm_state_dir, crashing_bundle()):
        yield api


async def new_vm(api: Api, user: str) -> dict[str, Any]:
    async with api.client() as admin:
        created = await admin.post("/api/vms", json={"userId": user})
    assert created.status_code == 201, created.text
    vm: dict[str, Any] = created.json()
    assert vm["agentVersion"] == BASE_VERSION
    return vm


async def update(api: Api, vm_id: str) -> dict[str, Any]:
    async with api.client() as admin:
        answer = await admin.post(f"/api/vms/{vm_id}/agent/update", json={})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_a_new_build_replaces_the_running_agent_keeping_token_and_credentials(
    updating: Api,
) -> None:
    api = updating
    vm = await new_vm(api, "ann")
    document = json.dumps(sample_document("claude_code", "ann")).encode()
    await api.ctl.credentials.capture("ann", "claude_code", document)
    await api.ctl.delivery.deliver("ann", "claude_code", vm["id"])
    agent = AgentClient(vm["agentUrl"], api.ctl.vms.agent_token(vm["id"]))
    before = await agent.credentials_document("claude_code")
    assert before is not None
    result = await update(api, vm["id"])
    assert result["status"] == "updated", result
    assert (result["fromVersion"], result["toVersion"]) == (BASE_VERSION, NEW_VERSION)
    async with api.client() as admin:
        shown = (await admin.get(f"/api/vms/{vm['id']}")).json()
        events = (await admin.get("/api/events")).json()["events"]
    assert shown["agentVersion"] == NEW_VERSION
    assert shown["status"] == "ready"
    # The same token opens the new agent, and the document delivered before is still there.
    version = await agent.version()
    assert version["version"] == NEW_VERSION
    assert version["update"]["ok"] is True
    assert await agent.credentials_document("claude_code") == before
    updated = [e for e in events if e["type"] == "agent.updated"]
    assert [e["data"]["toVersion"] for e in updated] == [NEW_VERSION]
    # Asked again, there is nothing to do.
    assert (await update(api, vm["id"]))["status"] == "current"


async def test_a_build_that_cannot_start_is_rolled_back_by_the_vm_and_told(
    crashing: Api, receiver: WebhookReceiver
) -> None:
    api = crashing
    async with api.client() as admin:
        hook = await admin.post(
            "/api/webhooks", json={"url": receiver.url, "events": ["agent.update_failed"]}
        )
    vm = await new_vm(api, "ann")
    result = await update(api, vm["id"])
    assert result["status"] == "rolled_back", result
    assert "rolled back in the VM" in result["error"]
    (told,) = await receiver.wait_for("agent.update_failed", timeout_s=10)
    assert verify(hook.json()["secret"], told.body, told.headers["x-hearth-signature"])
    assert told.event["data"]["toVersion"] == NEW_VERSION
    agent = AgentClient(vm["agentUrl"], api.ctl.vms.agent_token(vm["id"]))
    assert (await agent.health())["version"] == BASE_VERSION
    async with api.client() as admin:
        shown = (await admin.get(f"/api/vms/{vm['id']}")).json()
        ran = await admin.post(f"/api/vms/{vm['id']}/exec", json={"cmd": ["true"]})
        events = (await admin.get("/api/events")).json()["events"]
    assert shown["agentVersion"] == BASE_VERSION
    assert shown["status"] == "ready"
    assert ran.status_code == 200, ran.text
    # The agent was down on purpose: the heartbeat left it alone.
    assert not [e for e in events if e["type"] == "vm.unhealthy"]


async def test_a_rollout_with_max_unavailable_one_updates_one_vm_at_a_time(
    rolling_out: Api,
) -> None:
    api = rolling_out
    vm_ids = [(await new_vm(api, f"user{n}"))["id"] for n in range(4)]
    pool = api.ctl.vms.pool
    assert pool is not None
    await until_pool_holds(pool, VmType.CLI, 1, timeout_s=POOL_WAIT_S)
    async with api.client() as admin:
        started = await admin.post("/api/agent/rollout", json={"maxUnavailable": 1})
        assert started.status_code == 202, started.text
        assert sorted(v["vmId"] for v in started.json()["vms"]) == sorted(vm_ids)
        for _ in range(1200):
            rollout = (await admin.get("/api/agent/rollout")).json()
            if rollout["status"] == "done":
                break
            assert len([v for v in rollout["vms"] if v["status"] == "updating"]) <= 1
            await asyncio.sleep(0.25)
        again = await admin.post("/api/agent/rollout", json={})
    assert rollout["status"] == "done", rollout
    assert [v["status"] for v in rollout["vms"]] == ["updated"] * 4, rollout
    assert rollout["maxConcurrent"] == 1
    windows = sorted(
        (datetime.fromisoformat(v["startedAt"]), datetime.fromisoformat(v["endedAt"]))
        for v in rollout["vms"]
    )
    for (_, first_end), (second_start, _) in itertools.pairwise(windows):
        assert first_end <= second_start, windows
    # Every VM runs the build now: a second rollout has nothing to do.
    assert again.status_code == 202
    assert again.json()["vms"] == []
    # The image carries the build too; the pooled VM, on the old one, was replaced, and a new
    # VM restored from the template rebuilt on the changed image runs it.
    image = api.settings.state_dir.parent / "image"
    assert rollout["imagesChanged"] == [str(image / "rootfs.ext4")]
    assert rollout["imagesError"] is None
    assert rollout["poolRecycled"] == 1
    payload = build_payload(AgentBundle.build(version=NEW_VERSION).sources, NEW_VERSION)
    assert verify_image(image / "rootfs.ext4", payload).ok
    # The refill boots from a new template: one cold boot, then the restore.
    await until_pool_holds(pool, VmType.CLI, 1, timeout_s=POOL_WAIT_S)
    async with api.client() as admin:
        created = await admin.post("/api/vms", json={"userId": "late"})
    assert created.status_code == 201, created.text
    assert created.json()["agentVersion"] == NEW_VERSION
