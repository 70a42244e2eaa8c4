"""A user's workspace volume that will not attach or mount, through the API in process over the
fake backend, on SQLite and PostgreSQL: the create is 409 ``workspace_unusable`` naming the
workspace and the cause, on the warm pool's path and on a cold boot alike, and deleting the
workspace starts afresh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hearth.api.app import create_app
from hearth.config import Settings
from hearth.errors import VmError
from hearth.vm.types import Vm, VmState, VmType, Volume
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api, assert_error, running_api
from tests.integration.test_api_pool import pool_of, pooled_api, until_pool_holds

# QEMU's answer when the volume's header is not what it wrote (a file cut short or overwritten).
BROKEN = "Could not read LUKS header"


def refusing_broken_volumes(backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fake VMM refuse, as QEMU does, a volume whose file no longer holds what its
    ``create_volume`` wrote there (nothing, in the fake)."""
    attach = backend.attach_volume

    async def attach_checked(vm: Vm, volume: Volume) -> str | None:
        if volume.path.read_bytes():
            raise VmError(f"VM {vm.id}: QMP blockdev-add failed: {BROKEN}")
        return await attach(vm, volume)

    monkeypatch.setattr(backend, "attach_volume", attach_checked)


@asynccontextmanager
async def controller(
    settings: Settings, backend: FakeBackend, images: Path, *, pool: bool
) -> AsyncIterator[Api]:
    """The controller with a warm pool of one CLI VM (full) or none."""
    if not pool:
        async with running_api(settings, backend, images) as api:
            yield api
        return
    async with pooled_api(
        settings.with_overrides(pool_cli=1), backend, images, DEFAULT_QUOTAS
    ) as api:
        await until_pool_holds(pool_of(api), VmType.CLI, 1)
        yield api


@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "cold"])
async def test_a_workspace_that_will_not_attach_is_409_workspace_unusable_until_deleted(
    pool: bool,
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On the pool's path the attach error came back as a 500 (vm_error): a user could not tell
    # that their own workspace was the trouble, nor what would get them going again.
    refusing_broken_volumes(fake_backend, monkeypatch)
    async with controller(api_settings, fake_backend, tmp_path / "image", pool=pool) as api:
        first = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert first.status_code == 201, first.text
        await api.client.delete(f"/api/vms/{first.json()['id']}", headers=api.headers())
        workspace = await api.ctl.store.workspaces.get("ann")
        assert workspace is not None
        volume = api.ctl.vms.node.volume_path(workspace.id)
        volume.write_bytes(b"\0" * 512)  # overwritten: its header is gone
        if pool:
            await until_pool_holds(pool_of(api), VmType.CLI, 1)
            [pooled_id] = pool_of(api)._ready[VmType.CLI]

        refused = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())

        error = assert_error(refused, 409, "workspace_unusable")
        assert workspace.id in error["message"]
        assert BROKEN in error["message"]
        assert "DELETE /api/users/ann/workspace" in error["message"]
        if pool:  # the pooled VM was not the trouble: it waits for the next create
            assert pool_of(api)._ready[VmType.CLI] == [pooled_id]
            row = await api.ctl.store.vms.get(pooled_id)
            assert (row.status, row.pooled) == (VmState.READY, True)
        # Another user is not held up by ann's workspace.
        bob = await api.client.post("/api/vms", json={"userId": "bob"}, headers=api.headers())
        assert bob.status_code == 201, bob.text
        # Deleting it starts afresh.
        deleted = await api.client.delete("/api/users/ann/workspace", headers=api.headers())
        assert deleted.status_code == 200, deleted.text
        again = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert again.status_code == 201, again.text
        [fresh] = api.backend.running[again.json()["id"]].volumes
        assert fresh.path != volume


async def test_a_vm_that_dies_during_the_attach_is_not_blamed_on_the_workspace(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Deleting the workspace would cost the user their files for the VM's fault.
    attach = fake_backend.attach_volume

    async def dying_attach(vm: Vm, volume: Volume) -> str | None:
        fake_backend.kill(vm.id)
        return await attach(vm, volume)

    async with running_api(api_settings, fake_backend, tmp_path / "image") as api:
        monkeypatch.setattr(fake_backend, "attach_volume", dying_attach)
        refused = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert refused.status_code >= 400
        assert refused.json()["error"]["code"] != "workspace_unusable", refused.text


def test_the_openapi_names_workspace_unusable() -> None:
    spec = create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()
    conflict = spec["paths"]["/api/vms"]["post"]["responses"]["409"]["description"]
    assert "workspace_unusable" in conflict
