"""Users' workspace volumes in process, on SQLite and PostgreSQL, over the fake backend: made by
the first CLI VM, its key sealed, attached to one VM at a time, kept when the VM goes, given to
the next one, removed by ``DELETE /api/users/{id}/workspace`` (409 while held), counted in the
user's disk quota. Mounting it in a real guest, and files surviving a VM's replacement, are in
``tests/vm/test_workspaces.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.control.pool import POOL_USER
from hearth.control.row_seal import RowSeal
from hearth.errors import NotSupported
from hearth.store import VmRecord
from hearth.store.records import SEALED_WORKSPACE_KEY_FIELDS, WorkspaceRecord
from hearth.vm.types import Vm, VmState, Volume
from tests.agent_backend import AgentBackend
from tests.fake_backend import FakeBackend
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api


@pytest.fixture
async def api_ws(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """A controller giving 1 GiB workspaces within a 1.5 GiB quota, two CLI VMs per user."""
    settings = api_settings.with_overrides(
        workspace_size_mib=1024, user_disk_quota_mib=1536, max_cli_per_user=2
    )
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        yield api


async def new_vm(api: Api, user: str = "ann", **body: object) -> str:
    """A ready VM of ``user``'s; its id."""
    created = await api.client.post(
        "/api/vms", json={"userId": user, **body}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def workspace_of(api: Api, user: str = "ann") -> dict[str, object]:
    shown = await api.client.get(f"/api/users/{user}/workspace", headers=api.headers())
    assert shown.status_code == 200, shown.text
    body: dict[str, object] = shown.json()
    return body


async def test_the_first_cli_vm_makes_the_workspace_and_the_next_one_gets_it(
    api_ws: Api,
) -> None:
    api = api_ws
    assert_error(
        await api.client.get("/api/users/ann/workspace", headers=api.headers()), 404, "not_found"
    )
    first = await new_vm(api)
    shown = await workspace_of(api)
    assert shown["sizeMib"] == 1024
    assert shown["attachedVmId"] == first
    [volume] = api.ctl.vms.live[first].volumes
    assert volume.serial == "hearth-workspace"
    assert volume.path.parent == api.settings.state_dir / "volumes"
    assert api.backend.volumes[volume.path] == (1024, volume.key)
    # Its key is sealed in the store, never there in clear.
    record = await api.ctl.store.workspaces.get("ann")
    assert record is not None
    assert all(getattr(record, field) is not None for field in SEALED_WORKSPACE_KEY_FIELDS)
    assert volume.key not in (record.seal_ciphertext or b"")
    # A second CLI VM of ann's runs without it: one VM holds it at a time.
    second = await new_vm(api)
    assert api.ctl.vms.live[second].volumes == []
    assert (await workspace_of(api))["attachedVmId"] == first
    # The VM goes; the workspace stays, and the next VM gets the very same volume.
    await api.client.delete(f"/api/vms/{first}", headers=api.headers())
    await api.client.delete(f"/api/vms/{second}", headers=api.headers())
    assert (await workspace_of(api))["attachedVmId"] is None
    assert volume.path.exists()
    third = await new_vm(api)
    assert api.ctl.vms.live[third].volumes == [volume]
    assert (await workspace_of(api))["attachedVmId"] == third
    # Browser VMs never get it.
    browser = await new_vm(api, vmType="browser")
    assert api.ctl.vms.live[browser].volumes == []


async def test_deleting_a_workspace_is_refused_while_a_vm_holds_it(api_ws: Api) -> None:
    api = api_ws
    vm_id = await new_vm(api)
    path = api.ctl.vms.live[vm_id].volumes[0].path
    error = assert_error(
        await api.client.delete("/api/users/ann/workspace", headers=api.headers()),
        409,
        "conflict",
    )
    assert vm_id in error["message"]
    # Hibernated, it still holds it.
    await api.client.post(f"/api/vms/{vm_id}/hibernate", headers=api.headers())
    assert_error(
        await api.client.delete("/api/users/ann/workspace", headers=api.headers()),
        409,
        "conflict",
    )
    await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())
    removed = await api.client.delete("/api/users/ann/workspace", headers=api.headers())
    assert removed.status_code == 200, removed.text
    assert not path.exists()
    assert await api.ctl.store.workspaces.get("ann") is None
    assert_error(
        await api.client.delete("/api/users/ann/workspace", headers=api.headers()),
        404,
        "not_found",
    )
    # The next VM starts with a new, empty one.
    fresh = await new_vm(api)
    assert api.ctl.vms.live[fresh].volumes[0].path != path


async def test_a_hibernated_vm_wakes_with_its_workspace(api_ws: Api) -> None:
    api = api_ws
    vm_id = await new_vm(api)
    [volume] = api.ctl.vms.live[vm_id].volumes
    await api.client.post(f"/api/vms/{vm_id}/hibernate", headers=api.headers())
    woken = await api.client.post(f"/api/vms/{vm_id}/resume", headers=api.headers())
    assert woken.status_code == 200, woken.text
    assert api.ctl.vms.live[vm_id].volumes == [volume]


async def test_a_user_key_sees_only_its_own_workspace(api_ws: Api) -> None:
    api = api_ws
    await new_vm(api, "bob")
    bob = api.headers(await api.user_key("bob"))
    assert (await api.client.get("/api/users/bob/workspace", headers=bob)).status_code == 200
    assert_error(await api.client.get("/api/users/ann/workspace", headers=bob), 403, "forbidden")
    assert_error(await api.client.delete("/api/users/ann/workspace", headers=bob), 403, "forbidden")


async def test_the_disk_quota_counts_the_workspace(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    settings = api_settings.with_overrides(workspace_size_mib=2048, user_disk_quota_mib=1024)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        error = assert_error(
            await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers()),
            409,
            "quota_exceeded",
        )
        assert "2048 MiB" in error["message"]
        assert "HEARTH_USER_DISK_QUOTA_MIB" in error["message"]
        assert await api.ctl.store.workspaces.get("ann") is None
        assert fake_backend.running == {}


async def test_workspaces_off_make_none(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    settings = api_settings.with_overrides(workspace_size_mib=0)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        vm_id = await new_vm(api)
        assert api.ctl.vms.live[vm_id].volumes == []
        assert_error(
            await api.client.get("/api/users/ann/workspace", headers=api.headers()),
            404,
            "not_found",
        )


class NoVolumes(FakeBackend):
    """A backend whose VMM keeps no volumes (as Firecracker's, today)."""

    async def create_volume(self, path: Path, size_mib: int, key: bytes) -> None:
        raise NotSupported("the fake backend cannot attach volumes yet")


async def test_a_vmm_without_volumes_runs_cli_vms_without_a_workspace(
    api_settings: Settings, tmp_path: Path
) -> None:
    async with running_api(api_settings, NoVolumes(), tmp_path / "image") as api:
        vm_id = await new_vm(api)
        assert api.ctl.vms.live[vm_id].volumes == []
        assert await api.ctl.store.workspaces.get("ann") is None


def slow_plug(api: Api, plugged: asyncio.Event | None = None) -> None:
    """Make the node's plug take 0.3 s after it is done (as a guest's mount or first format
    takes), setting ``plugged`` when the volume is in."""
    plug = api.backend.attach_volume

    async def slowly(vm: Vm, volume: Volume) -> str | None:
        serial = await plug(vm, volume)
        if plugged is not None:
            plugged.set()
        await asyncio.sleep(0.3)
        return serial

    api.backend.attach_volume = slowly  # type: ignore[method-assign]


async def test_two_vms_started_at_once_do_not_both_get_the_workspace(api_ws: Api) -> None:
    api = api_ws
    slow_plug(api)
    # The workspace exists already, made by a VM since destroyed.
    await api.client.delete(f"/api/vms/{await new_vm(api)}", headers=api.headers())
    ids = await asyncio.gather(new_vm(api), new_vm(api))
    holding = [vm_id for vm_id in ids if api.ctl.vms.live[vm_id].volumes]
    assert len(holding) == 1, "two VMs hold one workspace volume"
    assert (await workspace_of(api))["attachedVmId"] == holding[0]


async def test_a_workspace_being_attached_is_not_deleted(api_ws: Api) -> None:
    api = api_ws
    plugged = asyncio.Event()
    slow_plug(api, plugged)
    create = asyncio.create_task(new_vm(api))
    await plugged.wait()
    refused = await api.client.delete("/api/users/ann/workspace", headers=api.headers())
    error = assert_error(refused, 409, "conflict")
    vm_id = await create
    assert vm_id in error["message"]
    [volume] = api.ctl.vms.live[vm_id].volumes
    assert volume.path.exists()
    assert (await workspace_of(api))["attachedVmId"] == vm_id


async def held_booting(api: Api) -> str:
    """A VM of ann's whose boot the fake backend holds (until ``api.backend.hold`` is set)."""
    api.backend.hold = asyncio.Event()
    booting = await api.client.post(
        "/api/vms?wait=false", json={"userId": "ann"}, headers=api.headers()
    )
    vm_id = booting.json()["id"]
    assert isinstance(vm_id, str)
    return vm_id


async def test_a_vm_destroyed_while_booting_takes_no_workspace_and_is_let_go(
    api_ws: Api,
) -> None:
    api = api_ws
    vm_id = await held_booting(api)
    destroyed = await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())
    assert destroyed.status_code == 200, destroyed.text
    api.backend.hold.set()
    await api.ctl.vms.wait_idle()
    assert vm_id not in api.ctl.vms.live, "the monitor would take it for a crash"
    assert await api.ctl.store.workspaces.get("ann") is None
    # The next VM of ann's gets the workspace.
    next_id = await new_vm(api)
    assert (await workspace_of(api))["attachedVmId"] == next_id


async def test_a_destroy_whose_vm_moved_on_between_its_read_and_its_write_still_destroys(
    api_ws: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row is read as booting; the boot ends before the destroy writes (held here between
    # the two): the destroy looks again instead of answering 409 "is ready, not booting".
    api = api_ws
    vm_id = await held_booting(api)
    rows = api.ctl.store.vms
    write = rows.transition
    hold = api.backend.hold
    assert hold is not None

    async def boot_ends_first(wanted: str, old: VmState, new: VmState, **fields: Any) -> VmRecord:
        if old is VmState.BOOTING and new is VmState.FAILED and not hold.is_set():  # once
            hold.set()
            while (await rows.get(wanted)).status is not VmState.READY:
                await asyncio.sleep(0.01)
        return await write(wanted, old, new, **fields)

    monkeypatch.setattr(rows, "transition", boot_ends_first)
    destroyed = await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())

    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json()["status"] == "destroyed"


async def test_a_vm_adopted_after_a_restart_keeps_its_volume_slot_and_workspace(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # A hibernation records the devices the VM runs with, and its wake starts the same ones:
    # an adopted VM must still know its volume slot and the workspace in it.
    settings = api_settings.with_overrides(workspace_size_mib=1024, user_disk_quota_mib=1536)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        vm_id = await new_vm(api)
        before = api.ctl.vms.live[vm_id]
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        adopted = api.ctl.vms.live[vm_id]
        assert adopted.spec.volume_slot_mib == before.spec.volume_slot_mib == 1024
        assert [(v.path, v.key, v.serial) for v in adopted.volumes] == [
            (v.path, v.key, v.serial) for v in before.volumes
        ]


async def test_a_workspace_whose_key_does_not_open_at_restart_fails_its_vm_not_the_start(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reconciliation raised on it, so the controller could not start at all (nor reap).
    settings = api_settings.with_overrides(workspace_size_mib=1024, user_disk_quota_mib=1536)
    async with running_api(settings, fake_backend, tmp_path / "image") as first:
        ann, bob = await new_vm(first, "ann"), await new_vm(first, "bob")
    opens = RowSeal.open

    def not_anns_workspace(seal: RowSeal, record: Any) -> bytes | None:
        if isinstance(record, WorkspaceRecord) and record.user_id == "ann":
            return None  # as when its sealed key was altered
        return opens(seal, record)

    monkeypatch.setattr(RowSeal, "open", not_anns_workspace)
    async with running_api(settings, fake_backend, tmp_path / "image") as second:
        failed = await second.ctl.store.vms.get(ann)
        assert failed.status is VmState.FAILED
        assert "its workspace could not be opened at controller start" in (failed.error or "")
        assert ann in fake_backend.destroyed
        assert (await second.ctl.store.vms.get(bob)).status is VmState.READY
        assert bob in second.ctl.vms.live


async def test_a_vm_writes_its_workspace_to_the_volume_before_it_is_hibernated(
    agent_api: Api,
) -> None:
    # Its saved memory holds the pages the guest cached: a hibernated VM destroyed without
    # waking would take the workspace's latest writes with it.
    api = agent_api
    vm_id = await new_vm(api)
    workspace = await api.ctl.store.workspaces.get("ann")
    assert workspace is not None
    assert workspace.vm_id == vm_id
    asleep = await api.client.post(f"/api/vms/{vm_id}/hibernate", headers=api.headers())
    assert asleep.status_code == 200, asleep.text

    backend = api.backend
    assert isinstance(backend, AgentBackend)
    logged = [record.get("event") for record in backend.agent(vm_id).log_records()]
    assert "workspace_synced" in logged


async def test_a_pooled_vm_holding_a_workspace_writes_it_out_before_it_ends(
    agent_api: Api,
) -> None:
    # A hand-out that fails after the mount (or a restart mid-hand-out) leaves a VM whose row
    # still names the pool's user holding ann's workspace: it is synced and unmounted all the
    # same before the VM is hibernated or destroyed.
    api = agent_api
    vm_id = await new_vm(api)
    record = await api.ctl.store.vms.get(vm_id)
    pooled = dataclasses.replace(record, user_id=POOL_USER)
    workspaces = api.ctl.vms.workspaces
    assert workspaces is not None

    await workspaces.before_hibernate(pooled, api.ctl.vms.agent_token(vm_id))

    backend = api.backend
    assert isinstance(backend, AgentBackend)
    logged = [entry.get("event") for entry in backend.agent(vm_id).log_records()]
    assert "workspace_synced" in logged
