"""One VM's pause, resume, hibernation, wake and destroy take turns, in process on SQLite and
PostgreSQL: a destroy meeting a wake or a pause under way waits for it (so the woken VM is not
left running under a destroyed row, and the credential pull-back meets an agent that runs), a
hibernation meeting a pause waits for it, and a controller restarted mid-destroy finishes the
destroy, pulling the credentials back first when the VM still runs. The VMs' agents are real
processes on loopback where a pull-back is the point (``AgentBackend``, which stops a paused
VM's agent as a paused guest's would be).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hearth.agent_client import AgentClient
from hearth.config import Settings
from hearth.vm.types import Vm, VmState
from tests.agent_backend import AgentBackend
from tests.fake_backend import FakeBackend
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.test_api_credentials import claude, login

HOURS = timedelta(hours=2)
HELD_S = 0.3  # how long a test checks that a call waits, and a lagging pause lags


class GatedWake(FakeBackend):
    """The fake, whose wakes wait for ``gate`` before the saved state is read (a real wake
    takes seconds: the state is loaded, then the agent must answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.waking = asyncio.Event()
        self.gate = asyncio.Event()

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        self.waking.set()
        await self.gate.wait()
        return await super().wake(vm, state_key)


class LaggingPause(AgentBackend):
    """Real agents; a pause answers ``HELD_S`` after the VM stopped (QMP's answer is still on
    its way when the vCPUs, and with them the agent, have stopped)."""

    def __init__(self, launcher: AgentLauncher) -> None:
        super().__init__(launcher)
        self.paused = asyncio.Event()

    async def pause(self, vm: Vm) -> None:
        await super().pause(vm)
        self.paused.set()
        await asyncio.sleep(HELD_S)


async def post(api: Api, vm_id: str, action: str) -> httpx.Response:
    """``POST /api/vms/{id}/{action}`` as the admin."""
    return await api.client.post(f"/api/vms/{vm_id}/{action}", headers=api.headers())


async def delete(api: Api, vm_id: str) -> httpx.Response:
    """``DELETE /api/vms/{id}`` as the admin."""
    return await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())


@dataclass
class Waking:
    """A hibernated CLI VM of ann's whose wake (a resume) is under way, held at the gate."""

    api: Api
    backend: GatedWake
    vm_id: str
    resume: asyncio.Task[httpx.Response]


@pytest.fixture
async def waking(api_settings: Settings, tmp_path: Path) -> AsyncIterator[Waking]:
    """The controller over ``GatedWake``, a VM's wake under way in it."""
    backend = GatedWake()
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        vm_id = await vm_for(api, "ann")
        slept = await post(api, vm_id, "hibernate")
        assert (slept.status_code, slept.json()["status"]) == (200, "hibernated"), slept.text
        resume = asyncio.create_task(post(api, vm_id, "resume"))
        await asyncio.wait_for(backend.waking.wait(), 10)
        try:
            yield Waking(api, backend, vm_id, resume)
        finally:
            backend.gate.set()  # a test that failed leaves no wake held
            await asyncio.gather(resume, return_exceptions=True)


async def holding_a_refreshed_login(api: Api) -> tuple[str, bytes]:
    """A CLI VM of ann's holding her Claude login, which its CLI has since refreshed (the
    VM's copy expires later than the vault's); the VM's id and the refreshed document."""
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "claude_code", vm_id, claude("old", datetime.now(UTC) + HOURS))
    refreshed = claude("refreshed", datetime.now(UTC) + 4 * HOURS)
    agent = AgentClient(api.ctl.vms.live_vm(vm_id).agent_url or "", api.ctl.vms.agent_token(vm_id))
    await agent.put_credentials("claude_code", refreshed)
    return vm_id, refreshed


async def test_a_delete_during_a_wake_waits_for_it_then_destroys_the_vm(waking: Waking) -> None:
    # The destroy moved the row on while the wake ran; the wake then put its VM in the
    # controller's hands and failed on the row: the VMM ran on under a destroyed row.
    api, vm_id = waking.api, waking.vm_id
    deleting = asyncio.create_task(delete(api, vm_id))
    await asyncio.sleep(HELD_S)
    assert not deleting.done(), (await deleting).text  # it waits for the wake
    waking.backend.gate.set()
    woken, deleted = await waking.resume, await deleting
    assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text
    assert (deleted.status_code, deleted.json()["status"]) == (200, "destroyed"), deleted.text
    assert (await api.ctl.store.vms.get(vm_id)).status is VmState.DESTROYED
    assert vm_id not in waking.backend.running, "a destroyed VM's VMM runs on"
    assert vm_id not in api.ctl.vms.live


async def test_a_wake_whose_row_moved_on_meanwhile_ends_the_vm_it_woke(waking: Waking) -> None:
    api, vm_id = waking.api, waking.vm_id
    # Another writer of the row (not one that takes the VM's turn) fails it meanwhile.
    await api.ctl.store.vms.transition(
        vm_id, VmState.BOOTING, VmState.FAILED, error="failed elsewhere"
    )
    waking.backend.gate.set()
    assert_error(await waking.resume, 409, "conflict")
    assert (await api.ctl.store.vms.get(vm_id)).status is VmState.FAILED
    assert vm_id not in waking.backend.running, "a failed VM's VMM runs on"
    assert vm_id not in api.ctl.vms.live


@pytest.mark.parametrize(
    ("method", "action", "ends"),
    [("DELETE", "", "destroyed"), ("POST", "/hibernate", "hibernated")],
    ids=["delete", "hibernate"],
)
async def test_a_destroy_or_hibernation_racing_a_pause_pulls_back_what_the_vm_refreshed(
    api_settings: Settings,
    agent_launcher: AgentLauncher,
    tmp_path: Path,
    method: str,
    action: str,
    ends: str,
) -> None:
    # The destroy (or hibernation) read the row "ready" while the pause had stopped the VM and
    # not yet written it: the pull-back was never given a running VM, timed out, and the vault
    # kept the document the VM's CLI had rotated away from.
    backend = LaggingPause(agent_launcher)
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        vm_id, refreshed = await holding_a_refreshed_login(api)
        pausing = asyncio.create_task(post(api, vm_id, "pause"))
        await asyncio.wait_for(backend.paused.wait(), 10)
        ended = await api.client.request(method, f"/api/vms/{vm_id}{action}", headers=api.headers())
        assert (ended.status_code, ended.json()["status"]) == (200, ends), ended.text
        paused = await pausing
        assert (paused.status_code, paused.json()["status"]) == (200, "paused"), paused.text
        assert await api.ctl.credentials.document("ann", "claude_code") == refreshed


async def test_a_restart_during_a_destroy_finishes_it_pulling_back_from_a_vm_still_there(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # The restart took a "stopping" row for a boot it cut short: the VM was failed "while
    # booting", its credentials never pulled back.
    backend = AgentBackend(agent_launcher)
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        # Ann's destroy had moved its row, the VM paused, when the controller ended; bob's
        # had also ended the VMM.
        ann, refreshed = await holding_a_refreshed_login(api)
        assert (await post(api, ann, "pause")).json()["status"] == "paused"
        bob = await vm_for(api, "bob")
        for vm_id, was in ((ann, VmState.PAUSED), (bob, VmState.READY)):
            await api.ctl.store.vms.transition(vm_id, was, VmState.STOPPING)
    backend.kill(bob)
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        for vm_id in ann, bob:
            record = await api.ctl.store.vms.get(vm_id)
            assert (record.status, record.error) == (VmState.DESTROYED, None), vm_id
        assert await api.ctl.credentials.document("ann", "claude_code") == refreshed
        assert ann not in backend.running
        assert not backend.running_agents()
