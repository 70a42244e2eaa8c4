"""A VM destroyed while it is being hibernated, in process over the fake backend, on SQLite and
PostgreSQL: by ``DELETE /api/vms/{id}``, and by a controller stopping with ``--destroy-on-exit``
(``VmService.shutdown(destroy_vms=True)``) while a lifetime's hibernation saves it. Either
waits for the save to end, then destroys the VM: nothing is left running or saved. A stop with
``--destroy-on-exit`` also destroys the VMs already hibernated (and their saved state) or paused.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.api.app import create_app
from hearth.config import Settings
from hearth.control import bootstrap
from hearth.periodic import every
from hearth.vm.types import Vm, VmState
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import (
    BASE_URL,
    DEFAULT_QUOTAS,
    Api,
    FakeImages,
    running_api,
)

CHECK_S = 0.05
RELEASE_AFTER_S = 0.3  # how long a held save goes on once the test lets it


class HeldSave(FakeBackend):
    """The fake, whose saves wait for ``release`` with the VMM still running (a save under way:
    cut short, it leaves the VM running, as QEMU's does)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        await self.release.wait()
        await super().hibernate(vm, state_key)


class SavedOnDisk(FakeBackend):
    """The fake, whose VMs have a work dir where a hibernation leaves a saved state (as QEMU's
    ``state.bin``) and which their destroy removes, as the real backends' do."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    async def create(self, *args: Any, **kwargs: Any) -> Vm:
        vm = await super().create(*args, **kwargs)
        vm.workdir = self.root / vm.id
        vm.workdir.mkdir(parents=True)
        return vm

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        await super().hibernate(vm, state_key)
        assert vm.workdir is not None
        (vm.workdir / "state.bin").write_bytes(b"saved")

    async def destroy(self, vm: Vm) -> None:
        await super().destroy(vm)
        if vm.workdir is not None:
            shutil.rmtree(vm.workdir, ignore_errors=True)


@pytest.fixture
def settings(api_settings: Settings) -> Settings:
    """Lifetimes looked at every ``CHECK_S``."""
    return api_settings.with_overrides(lifetime_check_interval_s=CHECK_S)


@asynccontextmanager
async def serving_destroy_on_exit(
    settings: Settings, backend: FakeBackend, images_root: Path
) -> AsyncIterator[Api]:
    """The app as ``hearth serve --destroy-on-exit`` builds it, its lifespan entered."""
    app = create_app(
        settings,
        backend=backend,  # type: ignore[arg-type]
        images=FakeImages(images_root),  # type: ignore[arg-type]
        quotas=DEFAULT_QUOTAS,
        destroy_on_exit=True,
    )
    async with app.router.lifespan_context(app):
        admin_key = (settings.state_dir / bootstrap.ADMIN_KEY_FILE).read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield Api(app, app.state.controller, settings, backend, admin_key, client)


async def until_row(api: Api, vm_id: str, status: VmState) -> None:
    async with asyncio.timeout(10):
        while (await api.ctl.store.vms.get(vm_id)).status is not status:
            await asyncio.sleep(0.02)


async def new_vm(api: Api, **body: object) -> str:
    created = await api.client.post(
        "/api/vms", json={"userId": "ann", **body}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_a_delete_during_a_hibernation_waits_for_the_save_then_destroys_the_vm(
    settings: Settings, tmp_path: Path
) -> None:
    backend = HeldSave()
    async with running_api(settings, backend, tmp_path / "image") as api:
        vm_id = await new_vm(api)
        url = f"/api/vms/{vm_id}"
        saving = asyncio.create_task(api.client.post(f"{url}/hibernate", headers=api.headers()))
        await until_row(api, vm_id, VmState.HIBERNATING)
        deleting = asyncio.create_task(api.client.delete(url, headers=api.headers()))
        await asyncio.sleep(RELEASE_AFTER_S)
        assert not deleting.done(), (await deleting).text  # it waits for the save
        backend.release.set()
        deleted, saved = await deleting, await saving
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["status"] == "destroyed"
        assert saved.status_code == 200, saved.text
        assert saved.json()["status"] == "hibernated"
        assert (await api.ctl.store.vms.get(vm_id)).status is VmState.DESTROYED
        assert vm_id not in backend.running


async def test_destroy_on_exit_destroys_a_vm_its_lifetime_is_hibernating(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stop ends the lifetime check first, whose step (the hibernation) has a grace to
    # finish, then destroys every VM. A save longer than that grace (here made short) was cut
    # short, the VM left running, its row "hibernating", which the destroy then refused.
    monkeypatch.setattr("hearth.control.lifetimes.every", functools.partial(every, grace_s=0.05))
    backend = HeldSave()
    async with serving_destroy_on_exit(settings, backend, tmp_path / "image") as api:
        vm_id = await new_vm(api, idleTimeoutS=1, idleAction="hibernate")
        await until_row(api, vm_id, VmState.HIBERNATING)
        asyncio.get_running_loop().call_later(RELEASE_AFTER_S, backend.release.set)
    assert vm_id not in backend.running, "a VM was left running"
    store = await bootstrap.open_store(settings)  # the controller's, closed with it
    try:
        assert (await store.vms.get(vm_id)).status is VmState.DESTROYED
    finally:
        await store.close()


async def test_destroy_on_exit_destroys_hibernated_and_paused_vms_and_the_saved_state(
    settings: Settings, tmp_path: Path
) -> None:
    # Only live VMs (and those being saved) were destroyed: a VM whose hibernation had ended
    # before the stop was kept, its row "hibernated" and its saved state on disk.
    backend = SavedOnDisk(tmp_path / "vms")
    async with serving_destroy_on_exit(settings, backend, tmp_path / "image") as api:
        asleep, paused = await new_vm(api), await new_vm(api)
        for vm_id, action, status in (
            (asleep, "hibernate", "hibernated"),
            (paused, "pause", "paused"),
        ):
            answer = await api.client.post(f"/api/vms/{vm_id}/{action}", headers=api.headers())
            assert (answer.status_code, answer.json()["status"]) == (200, status), answer.text
        saved = backend.root / asleep / "state.bin"
        assert saved.exists()
    assert not saved.parent.exists(), "a hibernated VM's saved state was kept"
    assert asleep not in backend.hibernated
    assert not backend.running, "a VM was left running"
    store = await bootstrap.open_store(settings)
    try:
        for vm_id in asleep, paused:
            assert (await store.vms.get(vm_id)).status is VmState.DESTROYED, vm_id
    finally:
        await store.close()
