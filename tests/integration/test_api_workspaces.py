"""Users' workspace volumes in process, on SQLite and PostgreSQL, over the fake backend: made by
the first CLI VM, its key sealed, attached to one VM at a time, kept when the VM goes, given to
the next one, removed by ``DELETE /api/users/{id}/workspace`` (409 while held), counted in the
user's disk quota. Mounting it in a real guest, and files surviving a VM's replacement, are in
``tests/vm/test_workspaces.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import NotSupported
from hearth.store.records import SEALED_WORKSPACE_KEY_FIELDS
from tests.fake_backend import FakeBackend
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
