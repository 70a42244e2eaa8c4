"""An agent build no VM judged, through the API in process: a VM destroyed, paused or hibernated
by its owner during its own update is ``interrupted``, which does not count against the build
(``rolled_back`` did: it kept the build from the images); and a rollout in which no VM ran the
build healthy (every VM skipped, or none to update) does not install it into the images, and
says why (``imagesError``).

The agents are real processes on loopback (``AgentBackend``) started without ``--updates``; the
push a VM's agent would accept (the swap itself runs in real VMs,
``tests/vm/test_agent_update.py``) is stood in for by an accepted one, after which the controller
waits for the VM as it would for a restart; writing the images is stood in for too
(``tests/integration/test_image_agent_install.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from hearth.agent_client import AgentClient
from hearth.control import agent_updates
from hearth.control.agent_updates import UpdateResult
from hearth.store import VmRecord
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api
from tests.integration.test_rollout_skips import images_written, outdated_vms, rollout_ended

# Long enough for the owner's pause to land within it, short enough for a test.
DEADLINE_S = 3.0
# How the owner ends the VM (its route) and what its row then shows.
ENDINGS = {
    "destroy": ("DELETE", "", "destroyed"),
    "pause": ("POST", "/pause", "paused"),
    "hibernate": ("POST", "/hibernate", "hibernated"),
}


async def end_vm(api: Api, vm_id: str, ending: str) -> None:
    """End VM ``vm_id`` as its owner would, through the API."""
    method, suffix, _ = ENDINGS[ending]
    answer = await api.client.request(method, f"/api/vms/{vm_id}{suffix}", headers=api.headers())
    assert answer.status_code == 200, answer.text


def pushes_accepted(monkeypatch: pytest.MonkeyPatch, then: Any) -> list[asyncio.Task[None]]:
    """Every push to an agent is answered as a VM's agent accepting it (202, then a restart),
    after which ``then()`` runs as a task (the owner acting while the controller waits); those
    tasks."""
    tasks: list[asyncio.Task[None]] = []

    async def accepted(client: AgentClient, bundle: bytes, **_: Any) -> dict[str, Any]:
        tasks.append(asyncio.create_task(then()))
        return {"updating": True}

    monkeypatch.setattr(AgentClient, "update_agent", accepted)
    return tasks


async def took_the_build(api: Api, record: VmRecord, started: datetime) -> UpdateResult:
    """A VM's update that ended ``updated`` (its push and restart stood in for)."""
    version = api.ctl.agent_updates.bundle.version
    await api.ctl.store.vms.update(record.id, agent_version=version)
    return UpdateResult(
        record.id, "updated", record.agent_version, version, started, datetime.now(UTC)
    )


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_a_vm_ended_during_its_update_is_interrupted_and_the_images_still_carry_the_build(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    api = agent_api
    updates = api.ctl.agent_updates
    monkeypatch.setattr(updates, "deadline_s", DEADLINE_S)
    monkeypatch.setattr(agent_updates, "RESTART_GRACE_S", 1.0)
    vm_ids = await outdated_vms(api, "ann", "bob")
    written = images_written(monkeypatch, api)
    pushed: list[str] = []
    owners = pushes_accepted(monkeypatch, lambda: end_vm(api, pushed[0], ending))
    update = updates._update

    async def first_ended_second_updated(record: VmRecord, started: datetime) -> UpdateResult:
        if pushed:  # the second VM
            return await took_the_build(api, record, started)
        pushed.append(record.id)  # the first VM: its owner ends it once the push is in
        return await update(record, started)

    monkeypatch.setattr(updates, "_update", first_ended_second_updated)
    body = await rollout_ended(api)

    await asyncio.gather(*owners)
    (first,) = pushed
    statuses = {vm["vmId"]: (vm["status"], vm.get("error") or "") for vm in body["vms"]}
    assert set(statuses) == set(vm_ids)
    status, error = statuses.pop(first)
    assert status == "interrupted", (status, error)
    assert f"the VM was {ENDINGS[ending][2]} during its update" in error
    # ``current`` when the heartbeat saw its agent (which runs this build) before its turn.
    assert [status for status, _ in statuses.values()] in (["updated"], ["current"])
    assert body["imagesError"] is None
    assert body["imagesChanged"] == ["/images/cli/rootfs.ext4"]
    assert written == [updates.bundle.version]
    events = (await api.client.get("/api/events", headers=api.headers())).json()["events"]
    assert not [e for e in events if e["type"] == "agent.update_failed"]


async def test_an_update_whose_vm_is_destroyed_while_it_is_pushed_is_interrupted(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner destroys the VM while the bundle is on its way: the push fails, as an agent's
    # refusal did, and was reported ``failed`` with ``agent.update_failed``.
    api = agent_api
    (vm_id,) = await outdated_vms(api, "cid")
    push = AgentClient.update_agent

    async def destroyed_meanwhile(client: AgentClient, bundle: bytes, **kwargs: Any) -> Any:
        await end_vm(api, vm_id, "destroy")
        return await push(client, bundle, **kwargs)

    monkeypatch.setattr(AgentClient, "update_agent", destroyed_meanwhile)
    answer = await api.client.post(f"/api/vms/{vm_id}/agent/update", headers=api.headers())

    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] == "interrupted", result
    assert "the VM was destroyed during its update" in result["error"]
    events = (await api.client.get("/api/events", headers=api.headers())).json()["events"]
    assert not [e for e in events if e["type"] == "agent.update_failed"]


@pytest.mark.parametrize("ending", ["destroy", "pause"])
async def test_a_rollout_whose_every_vm_was_skipped_leaves_the_images_alone(
    api: Api, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    vm_ids = await outdated_vms(api, "dee", "eve")
    written = images_written(monkeypatch, api)
    list_vms = api.ctl.vms.list_vms

    async def listed_then_ended(**kwargs: Any) -> list[VmRecord]:
        # The rollout has listed its VMs; their owners end them before their turns.
        listed = await list_vms(**kwargs)
        for vm_id in vm_ids:
            await end_vm(api, vm_id, ending)
        return listed

    monkeypatch.setattr(api.ctl.vms, "list_vms", listed_then_ended)
    body = await rollout_ended(api)

    assert sorted(vm["vmId"] for vm in body["vms"]) == sorted(vm_ids)
    assert [vm["status"] for vm in body["vms"]] == ["skipped", "skipped"]
    version = api.ctl.agent_updates.bundle.version
    assert body["imagesError"] == (
        f"no VM ran version {version} healthy (2 skipped or interrupted), so it was not "
        "installed into the images; `hearth image install-agent IMAGE` installs it regardless"
    )
    assert (body["imagesChanged"], body["poolRecycled"]) == ([], 0)
    assert written == []


async def test_a_rollout_with_no_vm_to_update_leaves_the_images_alone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = images_written(monkeypatch, api)
    body = await rollout_ended(api)

    assert body["vms"] == []
    assert body["imagesError"].startswith(
        f"no VM ran version {api.ctl.agent_updates.bundle.version} healthy (none to update)"
    )
    assert body["imagesChanged"] == []
    assert written == []
