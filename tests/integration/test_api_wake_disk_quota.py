"""A wake is held to the user's disk quota (``HEARTH_USER_DISK_QUOTA_MIB``) as a create is:
``POST /api/vms/{id}/resume`` of a hibernated VM whose user would be past it is 409
``quota_exceeded``, the VM left hibernated with its saved state; the saved state the wake drops
is not counted. In process, on SQLite and PostgreSQL, over the fake backend giving each VM a
work dir of real files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.control.disk_use import MIB
from hearth.vm.saved_files import state_path
from hearth.vm.types import VmState
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.test_api_disk_quota import quota_settings
from tests.integration.test_api_hibernate import new_vm, post


def backend_with_workdirs(tmp_path: Path) -> FakeBackend:
    """A fake backend whose VMs hold files in a work dir each, under ``tmp_path``."""
    backend = FakeBackend()
    backend.workdirs = tmp_path / "vms"
    return backend


@pytest.fixture
async def api_wq(api_settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    """A controller with 8 MiB workspaces within a 24 MiB quota."""
    backend = backend_with_workdirs(tmp_path)
    async with running_api(quota_settings(api_settings, 24), backend, tmp_path / "i") as api:
        yield api


async def test_a_wake_past_the_disk_quota_is_refused_as_a_create_and_the_vm_sleeps_on(
    api_wq: Api,
) -> None:
    api, asleep = api_wq, await new_vm(api_wq)
    slept = await post(api, asleep, "hibernate")
    assert slept.json()["status"] == "hibernated", slept.text
    assert api.backend.workdirs is not None
    state = state_path(api.backend.workdirs / asleep)
    saved = state.read_bytes()
    other = await new_vm(api)  # 8 + 5 (the layer and state of the first) + 3
    api.backend.grow(other, 16 * MIB)  # 8 + 17 > 24 with the first woken, its state dropped

    error = assert_error(await post(api, asleep, "resume"), 409, "quota_exceeded")
    assert "their VMs' disks 17 MiB" in error["message"], error
    assert "the quota is 24 MiB (HEARTH_USER_DISK_QUOTA_MIB)" in error["message"]
    assert (await api.ctl.store.vms.get(asleep)).status is VmState.HIBERNATED
    assert asleep in api.backend.hibernated
    assert state.read_bytes() == saved

    destroyed = await api.client.delete(f"/api/vms/{other}", headers=api.headers())
    assert destroyed.status_code in (200, 202, 204), destroyed.text
    woken = await post(api, asleep, "resume")
    assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text


async def test_a_wake_does_not_count_the_saved_state_it_drops(api_wq: Api) -> None:
    api = api_wq
    api.backend.state_bytes = 20 * MIB  # hibernated, the user is past the quota: 8 + 21
    vm_id = await new_vm(api)
    assert (await post(api, vm_id, "hibernate")).json()["status"] == "hibernated"
    woken = await post(api, vm_id, "resume")  # woken, 8 + 1
    assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text
