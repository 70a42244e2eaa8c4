"""The warm pool when things go wrong, through the controller in process over the fake VM
backend: a workspace that will not attach, a pooled VM failing or the store failing during its
hand-out, refills that keep failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from hearth.config import Settings
from hearth.control.pool import WarmPool
from hearth.errors import VmError
from hearth.store.repositories.vms import VmRepo
from hearth.vm.types import Vm, VmSpec, VmState, VmType, Volume
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api
from tests.integration.test_api_pool import pool_of, pooled_api, until_pool_holds

StartPool = Callable[[int], AbstractAsyncContextManager[tuple[Api, WarmPool]]]


@pytest.fixture
def start_pool(api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path) -> StartPool:
    """Start the controller with a warm pool of ``size`` CLI VMs, refilling often."""

    @asynccontextmanager
    async def started(size: int) -> AsyncIterator[tuple[Api, WarmPool]]:
        settings = api_settings.with_overrides(pool_cli=size)
        async with pooled_api(settings, fake_backend, tmp_path / "image", DEFAULT_QUOTAS) as api:
            yield api, pool_of(api)

    return started


async def test_a_workspace_that_will_not_attach_fails_the_create_and_leaves_the_pool_whole(
    start_pool: StartPool, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user-side attach error was taken for the pooled VM's fault: one create destroyed every
    # pooled VM in turn, under the host-wide admission lock, then failed the same way.
    async with start_pool(3) as (api, pool):
        await until_pool_holds(pool, VmType.CLI, 3)
        pooled = list(pool._ready[VmType.CLI])

        async def broken_mount(vm: Vm, volume: Volume) -> str | None:
            raise VmError(f"VM {vm.id}: mounting the workspace failed: bad superblock")

        monkeypatch.setattr(fake_backend, "attach_volume", broken_mount)
        created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert created.status_code >= 400
        assert "bad superblock" in created.json()["error"]["message"]
        assert sorted(pool._ready[VmType.CLI]) == sorted(pooled)
        for vm_id in pooled:
            row = await api.ctl.store.vms.get(vm_id)
            assert (row.status, row.pooled) == (VmState.READY, True)
            assert await api.ctl.store.workspaces.held_by(vm_id) is None


async def test_a_pooled_vm_that_fails_during_its_hand_out_is_not_handed_out(
    start_pool: StartPool, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hand-out's row update checked nothing: a VM failed by the monitor meanwhile was
    # handed out, announced ready, instead of a VM being booted.
    async with start_pool(1) as (api, pool):
        await until_pool_holds(pool, VmType.CLI, 1)
        [pooled_id] = pool._ready[VmType.CLI]
        attach = fake_backend.attach_volume

        async def dying_attach(vm: Vm, volume: Volume) -> str | None:
            serial = await attach(vm, volume)
            if vm.id == pooled_id:
                fake_backend.kill(vm.id)  # its VMM dies as the workspace goes in
                await api.ctl.vms.watch_once()  # and the monitor fails it
            return serial

        monkeypatch.setattr(fake_backend, "attach_volume", dying_attach)
        created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert created.status_code == 201, created.text
        assert created.json()["id"] != pooled_id
        assert created.json()["status"] == "ready"
        row = await api.ctl.store.vms.get(pooled_id)
        assert (row.status, row.user_id != "ann") == (VmState.FAILED, True)


async def test_a_pooled_vm_that_dies_during_its_hand_out_no_longer_holds_memory(
    start_pool: StartPool, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ended before the monitor saw it die, and taken out of the live set, the VM kept a
    # "ready" row no monitor would look at again: counted against the host's memory until a
    # restart.
    async with start_pool(1) as (api, pool):
        await until_pool_holds(pool, VmType.CLI, 1)
        [pooled_id] = pool._ready[VmType.CLI]
        pooled_mib = (await api.ctl.store.vms.get(pooled_id)).mem_mib
        attach = fake_backend.attach_volume

        async def dying_attach(vm: Vm, volume: Volume) -> str | None:
            serial = await attach(vm, volume)
            if vm.id == pooled_id:
                fake_backend.kill(vm.id)  # its VMM dies as the workspace goes in
            return serial

        monkeypatch.setattr(fake_backend, "attach_volume", dying_attach)
        created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert created.status_code == 201, created.text
        assert created.json()["id"] != pooled_id
        row = await api.ctl.store.vms.get(pooled_id)
        assert row.status is VmState.FAILED, row
        await until_pool_holds(pool, VmType.CLI, 1)
        running = [await api.ctl.store.vms.get(vm_id) for vm_id in fake_backend.running]
        assert await api.ctl.store.vms.sum_active_mem_mib() == sum(r.mem_mib for r in running)
        assert pooled_mib > 0


async def test_a_store_error_during_a_hand_out_ends_the_vm_and_frees_the_workspace(
    start_pool: StartPool, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row's update failed and the clean-up, through the same store, failed too: the VM ran
    # on outside the pool, holding ann's workspace; her next VM ran without her files.
    async with start_pool(1) as (api, pool):
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert made.status_code == 201, made.text
        await api.client.delete(f"/api/vms/{made.json()['id']}", headers=api.headers())
        await until_pool_holds(pool, VmType.CLI, 1)
        [pooled_id] = pool._ready[VmType.CLI]
        vms = api.ctl.store.vms
        real_get = vms.get
        down = asyncio.Event()

        def outage(name: str) -> OperationalError:
            down.set()
            return OperationalError(name, {}, Exception("server closed the connection"))

        async def update(vm_id: str, *args: Any, **fields: Any) -> Any:
            raise outage("UPDATE vms")

        async def get(vm_id: str) -> Any:
            if down.is_set():
                raise outage("SELECT vms")
            return await real_get(vm_id)

        for name, fake in (("update", update), ("update_if", update), ("get", get)):
            monkeypatch.setattr(vms, name, fake)
        spec: VmSpec = api.ctl.vms.spec_for(VmType.CLI, None, None)
        with pytest.raises(OperationalError):
            await api.ctl.vms.create(user_id="ann", spec=spec)
        monkeypatch.undo()  # the store is back

        assert pooled_id not in fake_backend.running
        assert pooled_id not in api.ctl.vms.live
        assert await api.ctl.store.workspaces.held_by(pooled_id) is None
        await until_pool_holds(pool, VmType.CLI, 1)
        again = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert again.status_code == 201, again.text
        assert fake_backend.running[again.json()["id"]].volumes


async def test_a_refill_that_keeps_failing_backs_off_and_recovers(
    start_pool: StartPool, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every refill interval (0.5 s by default) a new boot and a new failed row, for ever.
    attempts: list[str] = []
    create = fake_backend.create

    async def failing_create(image: Any, spec: VmSpec, *, vm_id: str, **kw: Any) -> Vm:
        attempts.append(vm_id)
        raise VmError(f"VM {vm_id}: the template's agent never answered")

    monkeypatch.setattr(fake_backend, "create", failing_create)
    async with start_pool(1) as (_, pool):  # refills every 0.05 s: 20 tries a second
        await asyncio.sleep(1.0)
        # 0.05, 0.1, 0.2, 0.4 s apart: 5 in the first second (a slow loop: fewer).
        assert 1 <= len(attempts) <= 6, attempts
        monkeypatch.setattr(fake_backend, "create", create)
        await until_pool_holds(pool, VmType.CLI, 1)  # tried again, within the backoff
        [ready] = pool._ready[VmType.CLI]
        # Failing again, it starts again from the refill interval: the backoff was reset.
        monkeypatch.setattr(fake_backend, "create", failing_create)
        tried = len(attempts)
        fake_backend.kill(ready)
        started = asyncio.get_running_loop().time()
        while len(attempts) < tried + 2:
            await asyncio.sleep(0.01)
        assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_store_error_as_a_booted_vm_goes_ready_ends_its_vmm(
    start_pool: StartPool, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a Conflict was caught there: a refill's VMM ran on, its row booting, seen by nobody.
    transition = VmRepo.transition
    blips = [OperationalError("UPDATE vms", {}, Exception("database is locked"))]

    async def blipping(repo: VmRepo, vm_id: str, old: Any, new: VmState, **fields: Any) -> Any:
        if new is VmState.READY and blips:
            raise blips.pop()
        return await transition(repo, vm_id, old, new, **fields)

    monkeypatch.setattr(VmRepo, "transition", blipping)
    async with start_pool(1) as (api, pool):
        await until_pool_holds(pool, VmType.CLI, 1)
        [first, _] = fake_backend.created
        assert list(fake_backend.running) == pool._ready[VmType.CLI]
        assert (await api.ctl.store.vms.get(first)).status is VmState.FAILED
