"""A user's workspace volume on real CLI VMs: hot-plugged into a restored clone, formatted once
and mounted where commands run by the agent, encrypted on the host, kept when the VM is replaced
and through a hibernation, gone after ``DELETE /api/users/{id}/workspace``. The rules (quota,
one holder, 409s) are tested in process in ``tests/integration/test_api_workspaces.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.files import files_holding
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_owned
from tests.vm.test_api import sqlite_only
from tests.vm.test_exec import sh

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]


@pytest.fixture
async def api(
    database_url: str, minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller giving 256 MiB workspaces."""
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_DATABASE_URL": database_url}
    ).with_overrides(workspace_size_mib=256)
    async for served in serve_owned(
        settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir
    ):
        yield served


async def _new_vm(client: httpx.AsyncClient) -> str:
    created = await client.post("/api/vms", json={"userId": "ann"})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_the_workspace_outlives_its_vm_and_a_hibernation_and_goes_when_deleted(
    api: Api,
) -> None:
    marker = f"repo-{secrets.token_hex(8)}"
    async with api.client() as admin:
        first = await _new_vm(admin)
        where = await sh(admin, first, "pwd; grep \" $(pwd) \" /proc/mounts | cut -d' ' -f1,3")
        cwd, mount = where.splitlines()
        assert mount.split() == ["/dev/vdb", "ext4"], f"the workspace is not the volume: {where}"
        await sh(admin, first, f"mkdir -p repo && echo {marker} > repo/README && sync")
        volume = api.ctl.vms.live[first].volumes[0].path
        assert files_holding(volume.parent, marker.encode()) == [], "the volume is in clear"
        # Replaced: destroyed, and a new VM made.
        assert (await admin.delete(f"/api/vms/{first}")).status_code == 200
        second = await _new_vm(admin)
        assert (await sh(admin, second, "pwd")).strip() == cwd
        assert (await sh(admin, second, "cat repo/README")).strip() == marker
        # Through a hibernation, still mounted and whole.
        assert (await admin.post(f"/api/vms/{second}/hibernate")).status_code == 200
        assert (await admin.delete("/api/users/ann/workspace")).status_code == 409
        assert (await admin.post(f"/api/vms/{second}/resume")).status_code == 200
        await sh(admin, second, f"echo again >> repo/README && grep -q {marker} repo/README")
        assert (await admin.delete(f"/api/vms/{second}")).status_code == 200
        # Deleted: gone from the host, and the next VM starts with an empty workspace.
        deleted = await admin.delete("/api/users/ann/workspace")
        assert deleted.status_code == 200, deleted.text
        assert not volume.exists()
        third = await _new_vm(admin)
        assert (await sh(admin, third, "ls -A")).strip() == ""


async def test_what_a_vm_wrote_before_it_was_hibernated_survives_its_destroy_unwoken(
    api: Api,
) -> None:
    # No sync by the user: the pages are in the guest's cache when the VM is saved. Destroyed
    # without waking, the VM's memory goes; the workspace must hold the write all the same.
    marker = f"unsynced-{secrets.token_hex(8)}"
    async with api.client() as admin:
        first = await _new_vm(admin)
        await sh(admin, first, f"echo {marker} > notes")
        assert (await admin.post(f"/api/vms/{first}/hibernate")).status_code == 200
        assert (await admin.delete(f"/api/vms/{first}")).status_code == 200
        second = await _new_vm(admin)
        assert (await sh(admin, second, "cat notes")).strip() == marker
