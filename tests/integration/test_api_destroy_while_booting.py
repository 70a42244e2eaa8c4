"""A destroy of a VM still booting, in process on SQLite and PostgreSQL: it answers once the
VM's VMM is gone, and until then the VM keeps its place in every limit, so a loop of create
and delete never has more VMMs booting than the limits allow. The fake backend ends a VM
whose create is cancelled, as the QEMU backend ends its QEMU.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.control.quotas import Quotas
from hearth.errors import VmError
from hearth.vm.types import Vm, VmType
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import POLL_ROUNDS, POLL_S, Api, running_api

HELD_S = 0.3  # how long a test checks that a call waits
ONE_BROWSER = Quotas(
    per_user={VmType.CLI: 1, VmType.BROWSER: 1}, max_browser_vms=1, memory_limit_mib=1024
)
BROWSER = {"userId": "eve", "vmType": "browser", "memMib": 1024}


async def until_booting(backend: FakeBackend, vm_id: str) -> None:
    """Wait until the fake has started VM ``vm_id``'s VMM."""
    for _ in range(POLL_ROUNDS):
        if vm_id in backend.running:
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"VM {vm_id} never started booting")


@pytest.fixture
async def held_api(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller with room for one Browser VM on the host; every boot held."""
    fake_backend.hold = asyncio.Event()
    settings = api_settings.with_overrides(workspace_size_mib=0)
    async with running_api(settings, fake_backend, tmp_path / "image", quotas=ONE_BROWSER) as api:
        yield api


async def test_a_destroy_of_a_booting_vm_answers_once_its_vmm_is_gone(held_api: Api) -> None:
    api, backend = held_api, held_api.backend
    created = await api.client.post("/api/vms?wait=false", json=BROWSER, headers=api.headers())
    vm_id = created.json()["id"]
    await until_booting(backend, vm_id)

    destroyed = await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())

    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json()["status"] == "destroyed"
    assert destroyed.json()["error"] == "destroyed while booting"
    # Its QEMU was booting on (until the boot deadline) under a row that no longer counted.
    assert vm_id not in backend.running
    assert backend.destroyed == [vm_id]


async def test_create_and_delete_in_a_loop_never_boots_past_the_host_limit(held_api: Api) -> None:
    api, backend = held_api, held_api.backend
    key = api.headers(await api.user_key("eve"))
    admin = api.headers()  # Browser VMs are made by admin keys only (for eve: the body says)
    most = 0
    for _ in range(5):
        created = await api.client.post("/api/vms?wait=false", json=BROWSER, headers=admin)
        assert created.status_code == 202, created.text
        most = max(most, len(backend.running))
        deleted = await api.client.delete(f"/api/vms/{created.json()['id']}", headers=key)
        assert deleted.json()["status"] == "destroyed"
    last = await api.client.post("/api/vms?wait=false", json=BROWSER, headers=admin)
    assert last.status_code == 202, last.text
    await until_booting(backend, last.json()["id"])

    # One Browser VM host-wide: never more than one VMM.
    assert max(most, len(backend.running)) == 1
    assert list(backend.running) == [last.json()["id"]]


async def test_a_create_that_waits_gets_the_failed_vm_when_a_destroy_stops_its_boot(
    held_api: Api,
) -> None:
    api, backend = held_api, held_api.backend
    creating = asyncio.create_task(
        api.client.post("/api/vms", json={"userId": "eve"}, headers=api.headers())
    )
    for _ in range(POLL_ROUNDS):
        if backend.running:
            break
        await asyncio.sleep(POLL_S)
    [vm_id] = backend.running

    await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())

    # The boot's cancel is not the waiter's: it is answered, not cut off.
    answered = await asyncio.wait_for(creating, POLL_S * POLL_ROUNDS)
    assert answered.status_code == 202, answered.text
    assert answered.json()["id"] == vm_id
    assert answered.json()["status"] in ("failed", "stopping", "destroyed")
    assert answered.json()["error"] == "destroyed while booting"


async def test_a_wait_for_a_boot_a_destroy_stopped_raises_naming_why(held_api: Api) -> None:
    # wait_booted (a login's wait for its VMs) got the failed row back as if it had booted.
    api, backend, vms = held_api, held_api.backend, held_api.ctl.vms
    record = await vms.create(user_id="eve", spec=vms.spec_for(VmType.CLI, None, None), wait=False)
    waiting = asyncio.create_task(vms.wait_booted(record.id))
    for _ in range(POLL_ROUNDS):
        if backend.running:
            break
        await asyncio.sleep(POLL_S)

    await api.client.delete(f"/api/vms/{record.id}", headers=api.headers())

    with pytest.raises(VmError, match="destroyed while booting"):
        await asyncio.wait_for(waiting, POLL_S * POLL_ROUNDS)


async def test_a_destroy_meeting_a_boot_whose_vmm_is_up_waits_for_it_then_ends_the_vm(
    held_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The VMM is up; the boot attaches the user's workspace (a hot-plug, the agent's mount).
    api, backend, vms = held_api, held_api.backend, held_api.ctl.vms
    attaching, gate = asyncio.Event(), asyncio.Event()
    attach = vms.attach_workspace

    async def gated_attach(user_id: str, vm: Vm) -> None:
        attaching.set()
        await gate.wait()
        await attach(user_id, vm)

    monkeypatch.setattr(vms, "attach_workspace", gated_attach)
    assert backend.hold is not None
    backend.hold.set()
    created = await api.client.post("/api/vms?wait=false", json=BROWSER, headers=api.headers())
    vm_id = created.json()["id"]
    await asyncio.wait_for(attaching.wait(), POLL_S * POLL_ROUNDS)

    destroying = asyncio.create_task(api.client.delete(f"/api/vms/{vm_id}", headers=api.headers()))
    try:
        await asyncio.sleep(HELD_S)
        assert not destroying.done(), "the destroy did not wait for the boot"
        # Still counted: the host's one Browser VM place is taken.
        other = {**BROWSER, "userId": "fay"}
        refused = await api.client.post("/api/vms?wait=false", json=other, headers=api.headers())
        assert refused.status_code == 429, refused.text
    finally:
        gate.set()

    destroyed = await destroying
    assert destroyed.json()["status"] == "destroyed"
    assert vm_id not in backend.running
    assert vm_id not in vms.live
