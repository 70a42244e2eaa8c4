"""Agent updates asked for side by side, in process over VMs whose agents are real processes on
loopback: one rollout at a time (409 for the other, as README promises), and one update of a VM
at a time, however the requests interleave with the checks' awaits. The agents run without
``--updates``, so a push that gets through is refused there (``failed``); the push is held
open here so that the two requests overlap.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hearth.control.agent_updates import AgentUpdates
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api

WITHIN_S = 20.0


async def outdated_vm(api: Api, user: str) -> str:
    """A ready VM whose agent the controller counts as not its build (so it is pushed)."""
    vm_id = await vm_for(api, user)
    await api.ctl.store.vms.update(vm_id, agent_version="0.0.1")
    return vm_id


def slowed(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, delay_s: float) -> None:
    """``target.name`` awaits ``delay_s`` first: the window between a check and its claim."""
    original = getattr(target, name)

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(delay_s)
        return await original(*args, **kwargs)

    monkeypatch.setattr(target, name, slow)


def counted_pushes(monkeypatch: pytest.MonkeyPatch, updates: AgentUpdates) -> list[str]:
    """The VMs each push went to, each push held 0.5 s so that the requests overlap."""
    pushes: list[str] = []
    push = updates._update

    async def held(record: Any, started: Any) -> Any:
        pushes.append(record.id)
        await asyncio.sleep(0.5)
        return await push(record, started)

    monkeypatch.setattr(updates, "_update", held)
    return pushes


async def test_two_rollouts_asked_for_at_once_start_one_and_refuse_the_other(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both checked "no rollout running", then awaited the VM list before either claimed the
    # slot: both 202, both pushing, the first's task no longer the one shutdown cancels.
    api = agent_api
    vm_id = await outdated_vm(api, "ann")
    updates = api.ctl.agent_updates
    pushes = counted_pushes(monkeypatch, updates)
    slowed(monkeypatch, api.ctl.vms, "list_vms", 0.2)
    url = "/api/agent/rollout"
    answers = await asyncio.gather(
        api.client.post(url, json={}, headers=api.headers()),
        api.client.post(url, json={}, headers=api.headers()),
    )
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    (refused,) = [a for a in answers if a.status_code == 409]
    assert refused.json()["error"]["code"] == "conflict"
    async with asyncio.timeout(WITHIN_S):
        while (await api.client.get(url, headers=api.headers())).json()["status"] == "running":
            await asyncio.sleep(0.1)
    assert pushes == [vm_id]


@pytest.mark.parametrize("second", ["manual", "rollout"])
async def test_two_updates_of_one_vm_asked_for_at_once_push_once(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch, second: str
) -> None:
    # The "already being updated" check and its claim were an await apart (the busy check's
    # store reads): both pushed, and the first to end released the heartbeat's hold while the
    # other's agent restarted.
    api = agent_api
    vm_id = await outdated_vm(api, "bob")
    updates = api.ctl.agent_updates
    pushes = counted_pushes(monkeypatch, updates)
    slowed(monkeypatch, updates, "_refuse_if_busy", 0.2)
    manual = api.client.post(f"/api/vms/{vm_id}/agent/update", json={}, headers=api.headers())
    if second == "manual":
        other = api.client.post(f"/api/vms/{vm_id}/agent/update", json={}, headers=api.headers())
    else:
        other = api.client.post("/api/agent/rollout", json={}, headers=api.headers())
    answers = await asyncio.gather(manual, other)
    if second == "rollout":
        async with asyncio.timeout(WITHIN_S):
            while updates.rollout is not None and updates.rollout.running:
                await asyncio.sleep(0.1)
    assert pushes == [vm_id], [a.text for a in answers]
    assert not updates._in_progress
