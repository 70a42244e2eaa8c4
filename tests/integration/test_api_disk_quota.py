"""The per-user disk quota (``HEARTH_USER_DISK_QUOTA_MIB``) counts what a user's VMs hold on the
node, in process on SQLite and PostgreSQL, over the fake backend giving each VM a work dir of
real files: disk layers as their guests fill them, hibernated VMs' saved state, the new VM's own
layer, in MiB rounded up, workspaces on or off; and the rows' ``disk_bytes`` follow the disks
(written only when they moved a MiB or more), refreshed by the controller on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.control import disk_use
from hearth.control.disk_use import MIB, DiskUse
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import POLL_ROUNDS, POLL_S, Api, assert_error, running_api

EMPTY_LAYER = 192 * 1024  # the fake's layer as a VM starts (tests/fake_backend.py)


@pytest.fixture
def fake_backend(tmp_path: Path) -> FakeBackend:
    """A fake backend whose VMs hold files in a work dir each."""
    backend = FakeBackend()
    backend.workdirs = tmp_path / "vms"
    return backend


def quota_settings(api_settings: Settings, quota_mib: int) -> Settings:
    """8 MiB workspaces within ``quota_mib``, three CLI VMs per user."""
    return api_settings.with_overrides(
        workspace_size_mib=8, user_disk_quota_mib=quota_mib, max_cli_per_user=3
    )


@pytest.fixture
async def api_dq(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """A controller with 8 MiB workspaces within a 24 MiB quota."""
    async with running_api(quota_settings(api_settings, 24), fake_backend, tmp_path / "i") as api:
        yield api


async def create(api: Api, user: str = "ann") -> httpx.Response:
    """``POST /api/vms`` of a CLI VM of ``user``."""
    return await api.client.post("/api/vms", json={"userId": user}, headers=api.headers())


async def new_vm(api: Api, user: str = "ann") -> str:
    """A ready CLI VM of ``user``'s; its id."""
    created = await create(api, user)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def refused(api: Api, user: str = "ann") -> str:
    """The message of the 409 ``quota_exceeded`` that refuses a CLI VM of ``user``'s."""
    return str(assert_error(await create(api, user), 409, "quota_exceeded")["message"])


async def disk_bytes(api: Api, vm_id: str) -> int | None:
    """The VM's ``diskBytes`` as the API shows it."""
    shown = await api.client.get(f"/api/vms/{vm_id}", headers=api.headers())
    assert shown.status_code == 200, shown.text
    value = shown.json()["diskBytes"]
    return None if value is None else int(value)


async def test_a_vm_whose_guest_filled_its_disk_counts_at_the_next_create(api_dq: Api) -> None:
    api = api_dq
    first = await new_vm(api)
    api.backend.grow(first, 14 * MIB)  # 14.2 MiB: 8 + 15 + 3 > 24
    message = await refused(api)
    assert "their VMs' disks 15 MiB" in message
    assert "HEARTH_USER_DISK_QUOTA_MIB" in message
    assert list(api.backend.running) == [first]
    # Another user's disks are theirs.
    await new_vm(api, "bob")
    destroyed = await api.client.delete(f"/api/vms/{first}", headers=api.headers())
    assert destroyed.status_code in (200, 202, 204), destroyed.text
    await new_vm(api)


async def test_a_hibernated_vms_saved_state_counts(api_dq: Api) -> None:
    api = api_dq
    api.backend.state_bytes = 14 * MIB
    first = await new_vm(api)
    slept = await api.client.post(f"/api/vms/{first}/hibernate", headers=api.headers())
    assert slept.json()["status"] == "hibernated", slept.text
    message = await refused(api)
    assert "their VMs' disks 15 MiB" in message
    # Woken, its state is read back in and no longer held.
    woken = await api.client.post(f"/api/vms/{first}/resume", headers=api.headers())
    assert woken.status_code == 200, woken.text
    await new_vm(api)


async def test_the_new_vms_own_layer_counts(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    async with running_api(quota_settings(api_settings, 10), fake_backend, tmp_path / "i") as api:
        assert "the new VM's own layer 3 MiB" in await refused(api)
        assert fake_backend.running == {}


async def test_a_part_of_a_mib_counts_whole(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    async with running_api(quota_settings(api_settings, 12), fake_backend, tmp_path / "i") as api:
        first = await new_vm(api)  # 8 + 0 + 3
        fake_backend.grow(first, MIB)  # 1.2 MiB: 8 + 2 + 3 > 12, rounded down it would fit
        assert "their VMs' disks 2 MiB" in await refused(api)


async def test_the_quota_holds_with_workspaces_off(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # Without workspaces a user's VMs alone can fill the host's disk: they count all the same.
    settings = api_settings.with_overrides(workspace_size_mib=0, user_disk_quota_mib=10)
    async with running_api(settings, fake_backend, tmp_path / "i") as api:
        first = await new_vm(api)  # 0 + 1 + 3
        fake_backend.grow(first, 7 * MIB)  # 7.2 MiB: 0 + 8 + 3 > 10
        message = await refused(api)
        assert "workspace 0 MiB, their VMs' disks 8 MiB" in message
        assert "the quota is 10 MiB (HEARTH_USER_DISK_QUOTA_MIB)" in message
        assert list(fake_backend.running) == [first]
        destroyed = await api.client.delete(f"/api/vms/{first}", headers=api.headers())
        assert destroyed.status_code in (200, 202, 204), destroyed.text
        await new_vm(api)
        assert await api.ctl.store.workspaces.get("ann") is None


async def test_rows_follow_the_disks_written_only_when_they_moved_a_mib(api_dq: Api) -> None:
    api = api_dq
    measure = DiskUse(store=api.ctl.store, node=api.ctl.node)
    vm_id = await new_vm(api)
    assert await disk_bytes(api, vm_id) == EMPTY_LAYER
    api.backend.grow(vm_id, 512 * 1024)
    assert await measure.refresh() == 0  # half a MiB: the row is left alone
    assert await disk_bytes(api, vm_id) == EMPTY_LAYER
    api.backend.grow(vm_id, 600 * 1024)
    assert await measure.refresh() == 1
    grown = EMPTY_LAYER + 1112 * 1024
    assert await disk_bytes(api, vm_id) == grown
    assert await measure.refresh() == 0
    slept = await api.client.post(f"/api/vms/{vm_id}/hibernate", headers=api.headers())
    assert slept.json()["status"] == "hibernated", slept.text
    assert await measure.refresh() == 1
    assert await disk_bytes(api, vm_id) == grown + api.backend.state_bytes
    woken = await api.client.post(f"/api/vms/{vm_id}/resume", headers=api.headers())
    assert woken.status_code == 200, woken.text
    await measure.refresh()
    assert await disk_bytes(api, vm_id) == grown


async def test_the_controller_measures_the_disks_on_its_own(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(disk_use, "REFRESH_INTERVAL_S", POLL_S)
    async with running_api(quota_settings(api_settings, 24), fake_backend, tmp_path / "i") as api:
        vm_id = await new_vm(api)
        fake_backend.grow(vm_id, 3 * MIB)
        for _ in range(POLL_ROUNDS):
            if (await disk_bytes(api, vm_id) or 0) > 3 * MIB:
                break
            await asyncio.sleep(POLL_S)
        assert await disk_bytes(api, vm_id) == EMPTY_LAYER + 3 * MIB
