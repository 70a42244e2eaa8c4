"""A rollout whose VM is destroyed or paused before its turn, through the API in process: that VM
is ``skipped`` with the reason and does not keep the build from the node's images; a VM whose
agent refused the build still does.

The first VM's push is stood in for (the swap itself runs in real VMs,
``tests/vm/test_agent_update.py``), and ends the other VM the way its owner would, through the
API; writing the images is stood in for too (``tests/integration/test_image_agent_install.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from hearth.agent_bundle import AgentBundle
from hearth.control.agent_updates import UpdateResult
from hearth.store import VmRecord
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api

WITHIN_S = 20.0
ENDED = {"destroy": "destroyed", "pause": "paused"}


async def outdated_vms(api: Api, *users: str) -> list[str]:
    """Ready VMs whose agent the controller counts as not its build (so a rollout pushes)."""
    vm_ids = [await vm_for(api, user) for user in users]
    for vm_id in vm_ids:
        await api.ctl.store.vms.update(vm_id, agent_version="0.0.1")
    return vm_ids


def images_written(monkeypatch: pytest.MonkeyPatch, api: Api) -> list[str]:
    """The versions the rollout wrote into the node's images."""
    written: list[str] = []

    async def install_agent(bundle: AgentBundle) -> list[str]:
        written.append(bundle.version)
        return ["/images/cli/rootfs.ext4"]

    monkeypatch.setattr(api.ctl.vms.node, "install_agent", install_agent)
    return written


async def rollout_ended(api: Api) -> dict[str, Any]:
    """Start a rollout, one VM at a time; its wire form once it is done."""
    url = "/api/agent/rollout"
    started = await api.client.post(url, json={"maxUnavailable": 1}, headers=api.headers())
    assert started.status_code == 202, started.text
    async with asyncio.timeout(WITHIN_S):
        while (body := (await api.client.get(url, headers=api.headers())).json())[
            "status"
        ] == "running":
            await asyncio.sleep(0.05)
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize("ending", ["destroy", "pause"])
async def test_a_vm_ended_before_its_turn_is_skipped_and_the_images_still_carry_the_build(
    api: Api, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    vm_ids = await outdated_vms(api, "ann", "bob")
    updates = api.ctl.agent_updates
    written = images_written(monkeypatch, api)

    async def push(record: VmRecord, started: datetime) -> UpdateResult:
        # While the first VM takes the build, the other's owner ends it.
        (other,) = [vm_id for vm_id in vm_ids if vm_id != record.id]
        if ending == "destroy":
            answer = await api.client.delete(f"/api/vms/{other}", headers=api.headers())
        else:
            answer = await api.client.post(f"/api/vms/{other}/pause", headers=api.headers())
        assert answer.status_code == 200, answer.text
        new = updates.bundle.version
        await api.ctl.store.vms.update(record.id, agent_version=new)
        ended = datetime.now(UTC)
        return UpdateResult(record.id, "updated", record.agent_version, new, started, ended)

    monkeypatch.setattr(updates, "_update", push)
    body = await rollout_ended(api)

    outcomes = sorted((vm["status"], vm.get("error")) for vm in body["vms"])
    assert outcomes == [
        ("skipped", f"the VM was {ENDED[ending]}, no longer ready, when its turn came"),
        ("updated", None),
    ]
    assert body["imagesError"] is None
    assert body["imagesChanged"] == ["/images/cli/rootfs.ext4"]
    assert written == [updates.bundle.version]


async def test_a_vm_whose_agent_refused_the_build_still_keeps_it_from_the_images(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agents here run without --updates: each refuses the push (``failed``). One VM is
    # destroyed before its turn (``skipped``); the refusal alone keeps the images as they were.
    api = agent_api
    vm_ids = await outdated_vms(api, "cid", "dee")
    written = images_written(monkeypatch, api)
    updates = api.ctl.agent_updates
    push = updates._update

    async def push_then_destroy_the_other(record: VmRecord, started: datetime) -> UpdateResult:
        (other,) = [vm_id for vm_id in vm_ids if vm_id != record.id]
        await api.ctl.vms.destroy(other)
        return await push(record, started)

    monkeypatch.setattr(updates, "_update", push_then_destroy_the_other)
    body = await rollout_ended(api)

    assert sorted(vm["status"] for vm in body["vms"]) == ["failed", "skipped"]
    assert body["imagesError"] == f"1 VM(s) did not take version {updates.bundle.version}"
    assert body["imagesChanged"] == []
    assert written == []
