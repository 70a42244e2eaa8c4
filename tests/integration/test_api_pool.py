"""The warm pool through the API in process, on SQLite and PostgreSQL, over the fake VM backend:
hand-out, refill, and memory admission with and without a pooled VM to hand out.

That a handed-out VM's token works against its real agent is shown in ``tests/vm/test_api.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.control.pool import POOL_USER, WarmPool
from hearth.control.quotas import Quotas
from hearth.vm.types import VmState, VmType
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api, assert_error, running_api

# The fake's VMs are ready at once: refills can come round often without loading the machine.
REFILL_INTERVAL_S = 0.05
POLL_S = 0.05
POLL_ROUNDS = 200


@pytest.fixture
def pool_settings(api_settings: Settings) -> Settings:
    """The test's settings with a warm pool of one CLI VM."""
    return api_settings.with_overrides(pool_cli=1)


@asynccontextmanager
async def pooled_api(
    settings: Settings, backend: FakeBackend, images_root: Path, quotas: Quotas
) -> AsyncIterator[Api]:
    """The controller with its pool refilling every ``REFILL_INTERVAL_S``."""
    async with running_api(settings, backend, images_root, quotas=quotas) as api:
        pool_of(api).refill_interval_s = REFILL_INTERVAL_S
        yield api


def pool_of(api: Api) -> WarmPool:
    """The controller's warm pool (the settings give it one)."""
    pool = api.ctl.vms.pool
    assert pool is not None
    return pool


async def until_pool_holds(pool: WarmPool, vm_type: VmType, size: int) -> None:
    """Wait until the warm pool holds ``size`` ready VMs of ``vm_type``."""
    for _ in range(POLL_ROUNDS):
        if pool.size(vm_type) == size:
            return
        await asyncio.sleep(POLL_S)
    assert pool.size(vm_type) == size


def ends_as_killed(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the controller's stop leave its pooled VMs as ``kill -9`` would (a clean stop
    destroys them): still running, their rows pooled."""

    async def killed() -> int:
        return 0

    monkeypatch.setattr(pool_of(api), "recycle", killed)


async def left_by_a_crash(
    settings: Settings, backend: FakeBackend, images: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The pooled VMs a controller with ``settings``' pool, once full, left when it was
    killed."""
    async with pooled_api(settings, backend, images, DEFAULT_QUOTAS) as api:
        pool = pool_of(api)
        for vm_type, size in pool.sizes.items():
            await until_pool_holds(pool, vm_type, size)
        ends_as_killed(api, monkeypatch)
    return list(backend.running)


@pytest.fixture
async def api(
    pool_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller with a warm pool of one CLI VM, with room for a few VMs."""
    async with pooled_api(
        pool_settings, fake_backend, tmp_path / "image", DEFAULT_QUOTAS
    ) as running:
        yield running


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """The fake image's directory, the same for every controller of a test (its restarts)."""
    return tmp_path / "image"


async def test_warm_pool_hands_out_a_claimed_vm_and_refills(api: Api) -> None:
    pool = pool_of(api)
    await until_pool_holds(pool, VmType.CLI, 1)
    [pooled_id] = api.backend.created
    # Claimed as it joined the pool (nothing else can claim its agent), its token sealed in
    # its row; but nobody's yet.
    pooled_token = api.backend.running[pooled_id].token
    assert pooled_token is not None
    row = await api.ctl.store.vms.get(pooled_id)
    assert row.pooled
    assert api.ctl.vms.tokens.open(row) == pooled_token
    assert (await api.client.get("/api/vms", headers=api.headers())).json()["vms"] == []

    response = await api.client.post("/api/vms", json={"userId": "lee"}, headers=api.headers())
    assert response.status_code == 201
    vm = response.json()
    # The pooled VM itself, now lee's, with the token of its own it was claimed with.
    assert vm["id"] == pooled_id
    assert vm["userId"] == "lee"
    assert vm["agentToken"] == pooled_token

    await until_pool_holds(pool, VmType.CLI, 1)
    assert len(api.backend.created) == 2
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_pool_handouts_total{vm_type="cli"} 1.0' in metrics
    assert 'hearth_pool_size{vm_type="cli"} 1.0' in metrics
    listed = (await api.client.get("/api/vms", headers=api.headers())).json()["vms"]
    assert [v["id"] for v in listed] == [vm["id"]]


async def test_memory_is_admitted_when_the_pool_has_nothing_to_hand_out_and_for_refills(
    pool_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # Room for one pooled 512 MiB VM and not for a second VM of that size.
    quotas = Quotas(
        per_user={VmType.CLI: 5, VmType.BROWSER: 1}, max_browser_vms=1, memory_limit_mib=900
    )
    async with pooled_api(pool_settings, fake_backend, tmp_path / "image", quotas) as api:
        pool = pool_of(api)
        await until_pool_holds(pool, VmType.CLI, 1)
        # A spec the pool does not hold: a new VM would have to start, and it does not fit.
        error = assert_error(
            await api.client.post(
                "/api/vms", json={"userId": "mo", "vcpus": 2}, headers=api.headers()
            ),
            429,
            "capacity_exhausted",
        )
        assert "memory" in error["message"]
        assert (await api.client.get("/api/vms", headers=api.headers())).json()["vms"] == []
        assert pool.size(VmType.CLI) == 1
        # The pool's own VM is already counted: handing it out needs no new memory.
        handed = await api.client.post("/api/vms", json={"userId": "mo"}, headers=api.headers())
        assert handed.status_code == 201, handed.text
        # The refill would not fit either: the pool stays empty instead of overfilling.
        await asyncio.sleep(3 * pool.refill_interval_s + 1)
        assert pool.size(VmType.CLI) == 0
        assert len(api.backend.created) == 1
        rows = await api.ctl.store.vms.list()
        assert [r.id for r in rows if r.status.value not in ("destroyed", "failed")] == [
            handed.json()["id"]
        ]


async def test_a_vm_booting_for_the_pool_when_it_is_recycled_never_joins_it(
    pool_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # An agent rollout recycles the pool once the images carry the new agent; a refill that
    # began before that boots the old images and must not be handed out afterwards.
    fake_backend.hold = asyncio.Event()
    async with pooled_api(pool_settings, fake_backend, tmp_path / "image", DEFAULT_QUOTAS) as api:
        pool = pool_of(api)
        for _ in range(POLL_ROUNDS):
            if fake_backend.running:
                break
            await asyncio.sleep(POLL_S)
        [booting_id] = fake_backend.running
        assert fake_backend.running[booting_id].state is VmState.BOOTING

        assert await pool.recycle() == 0  # nothing ready yet to destroy
        fake_backend.hold.set()

        await until_pool_holds(pool, VmType.CLI, 1)
        assert booting_id in fake_backend.destroyed
        [fresh_id] = fake_backend.running
        assert fresh_id != booting_id
        assert fake_backend.created == [booting_id, fresh_id]
        rows = {r.id: r for r in await api.ctl.store.vms.list()}
        assert rows[booting_id].status is VmState.DESTROYED
        assert rows[fresh_id].pooled
        assert rows[fresh_id].status is VmState.READY


async def test_an_unhealthy_pooled_vm_is_not_handed_out_but_destroyed(api: Api) -> None:
    pool = pool_of(api)
    await until_pool_holds(pool, VmType.CLI, 1)
    [pooled_id] = api.backend.created
    await api.ctl.store.vms.transition(
        pooled_id, VmState.READY, VmState.UNHEALTHY, error="its agent stopped answering"
    )
    created = await api.client.post("/api/vms", json={"userId": "lee"}, headers=api.headers())
    assert created.status_code == 201, created.text
    assert created.json()["id"] != pooled_id
    assert created.json()["status"] == "ready"
    assert created.json()["agentToken"]
    assert (await api.ctl.store.vms.get(pooled_id)).status is VmState.DESTROYED


async def test_a_pooled_vm_whose_vmm_died_no_longer_counts_in_the_pool(api: Api) -> None:
    pool = pool_of(api)
    await until_pool_holds(pool, VmType.CLI, 1)
    [pooled_id] = api.backend.created
    api.backend.kill(pooled_id)
    await until_pool_holds(pool, VmType.CLI, 1)  # refilled with another
    assert len(api.backend.created) == 2


async def test_a_pooled_vm_left_holding_a_workspace_by_a_restart_is_not_kept(
    pool_settings: Settings,
    fake_backend: FakeBackend,
    images: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pooled_api(pool_settings, fake_backend, images, DEFAULT_QUOTAS) as api:
        await until_pool_holds(pool_of(api), VmType.CLI, 1)
        [pooled_id] = api.backend.created
        # ann's workspace, made by a VM of hers since destroyed (the pool refills meanwhile).
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        await api.client.delete(f"/api/vms/{made.json()['id']}", headers=api.headers())
        workspace = await api.ctl.store.workspaces.get("ann")
        assert workspace is not None
        # The controller ends mid-hand-out: the workspace is in the pooled VM, still pooled.
        assert await api.ctl.store.workspaces.claim(
            workspace.id, pooled_id, held_by=workspace.vm_id
        )
        ends_as_killed(api, monkeypatch)
    async with pooled_api(pool_settings, fake_backend, images, DEFAULT_QUOTAS) as api:
        assert (await api.ctl.store.vms.get(pooled_id)).status is VmState.DESTROYED
        await until_pool_holds(pool_of(api), VmType.CLI, 1)
        lee = await api.client.post("/api/vms", json={"userId": "lee"}, headers=api.headers())
        assert lee.json()["id"] != pooled_id


async def test_a_create_cancelled_during_a_hand_out_leaves_no_vm_and_the_workspace_free(
    pool_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The VM left the pool when its hand-out began: a cancel then (a login's deadline) left it
    # running, counted nowhere, holding ann's workspace, so her next VM ran without her files.
    async with pooled_api(pool_settings, fake_backend, tmp_path / "image", DEFAULT_QUOTAS) as api:
        await until_pool_holds(pool_of(api), VmType.CLI, 1)
        [pooled_id] = api.backend.created
        attaching, go_on = asyncio.Event(), asyncio.Event()
        attach = fake_backend.attach_volume

        async def slow_attach(vm: Any, volume: Any) -> str | None:
            attaching.set()
            await go_on.wait()
            return await attach(vm, volume)

        monkeypatch.setattr(fake_backend, "attach_volume", slow_attach)
        vms = api.ctl.vms
        spec = vms.spec_for(VmType.CLI, None, None)
        creating = asyncio.create_task(vms.create(user_id="ann", spec=spec))
        await asyncio.wait_for(attaching.wait(), timeout=10)
        creating.cancel()
        asyncio.get_running_loop().call_later(0.1, go_on.set)
        with pytest.raises(asyncio.CancelledError):
            await creating

        assert (await api.ctl.store.vms.get(pooled_id)).status is VmState.DESTROYED
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert made.status_code == 201, made.text
        assert api.backend.running[made.json()["id"]].volumes


async def test_a_refill_that_crashes_unforeseen_is_retried_not_the_end_of_the_pool(
    pool_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # An error that is not Hearth's own (a full disk's OSError from the VMM's files) ended the
    # refill loop for good: the pool stayed empty until the controller restarted.
    fake_backend.fail_next = OSError(28, "No space left on device")
    async with pooled_api(pool_settings, fake_backend, tmp_path / "image", DEFAULT_QUOTAS) as api:
        await until_pool_holds(pool_of(api), VmType.CLI, 1)
        assert fake_backend.fail_next is None  # the first refill did fail
        rows = await api.ctl.store.vms.list(user_id=POOL_USER)
        assert [r.status for r in rows].count(VmState.FAILED) == 1, rows


async def test_pooled_vms_a_crash_left_are_destroyed_by_a_controller_without_a_pool(
    api_settings: Settings,
    fake_backend: FakeBackend,
    images: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Adopted at start, they stayed for good: no pool to hand them out or destroy them, never
    # listed, yet holding memory and counted against the host's limits.
    pooled = api_settings.with_overrides(pool_cli=1, pool_browser=1)
    left = await left_by_a_crash(pooled, fake_backend, images, monkeypatch)
    assert len(left) == 2
    async with running_api(api_settings, fake_backend, images) as api:
        assert api.ctl.vms.pool is None
        for vm_id in left:
            assert (await api.ctl.store.vms.get(vm_id)).status is VmState.DESTROYED
        assert fake_backend.running == {}
        assert sorted(fake_backend.destroyed) == sorted(left)


@pytest.mark.parametrize(("before", "after"), [(3, 1), (2, 2)])
async def test_a_pool_after_a_crash_keeps_up_to_its_size_of_the_pooled_vms_left_and_hands_them_out(
    pool_settings: Settings,
    fake_backend: FakeBackend,
    images: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: int,
    after: int,
) -> None:
    left = await left_by_a_crash(
        pool_settings.with_overrides(pool_cli=before), fake_backend, images, monkeypatch
    )
    settings = pool_settings.with_overrides(pool_cli=after)
    async with pooled_api(settings, fake_backend, images, DEFAULT_QUOTAS) as api:
        assert pool_of(api).size(VmType.CLI) == after
        kept = [vm_id for vm_id in left if vm_id in fake_backend.running]
        assert len(kept) == after
        for vm_id in set(left) - set(kept):
            assert (await api.ctl.store.vms.get(vm_id)).status is VmState.DESTROYED
        assert fake_backend.created == left  # none booted beside them
        handed = []
        for user in ("lee", "ann")[:after]:
            made = await api.client.post("/api/vms", json={"userId": user}, headers=api.headers())
            handed.append(made.json()["id"])
        assert sorted(handed) == sorted(kept)


async def test_pooled_vms_a_crash_left_of_another_size_than_the_default_now_are_replaced(
    pool_settings: Settings,
    fake_backend: FakeBackend,
    images: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hand-out is a VM of the type's default size: one the last controller pooled at its
    # own default would be handed out at a size nobody asked for.
    [old] = await left_by_a_crash(pool_settings, fake_backend, images, monkeypatch)
    bigger = pool_settings.with_overrides(default_mem_mib=1024)
    async with pooled_api(bigger, fake_backend, images, DEFAULT_QUOTAS) as api:
        assert (await api.ctl.store.vms.get(old)).status is VmState.DESTROYED
        await until_pool_holds(pool_of(api), VmType.CLI, 1)
        lee = await api.client.post("/api/vms", json={"userId": "lee"}, headers=api.headers())
        assert lee.json()["id"] != old
        assert lee.json()["memMib"] == 1024
