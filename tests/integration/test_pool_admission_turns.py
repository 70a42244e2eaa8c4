"""Admission while a warm-pool hand-out mounts a user's workspace, through the controller in
process over the fake VM backend, on SQLite and PostgreSQL: a slow mount holds back that user's
next create (their VMs are counted once it ends), never another user's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.control.pool import WarmPool
from hearth.control.quotas import Quotas
from hearth.vm.types import Vm, VmType, Volume
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api, assert_error
from tests.integration.test_api_pool import pool_of, pooled_api, until_pool_holds

# Far longer than an unhindered create over the fake backend takes.
NOT_HELD_S = 5.0


class SlowMount:
    """The fake VMM's attach of the first volume asked for waits until ``go_on`` is set."""

    def __init__(self, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attaching = asyncio.Event()
        self.go_on = asyncio.Event()
        self._attach = backend.attach_volume
        monkeypatch.setattr(backend, "attach_volume", self.attach)

    async def attach(self, vm: Vm, volume: Volume) -> str | None:
        if not self.attaching.is_set():
            self.attaching.set()
            await self.go_on.wait()
        return await self._attach(vm, volume)


@asynccontextmanager
async def full_pool(
    settings: Settings, backend: FakeBackend, images: Path, size: int, quotas: Quotas
) -> AsyncIterator[tuple[Api, WarmPool]]:
    """The controller with a warm pool of ``size`` CLI VMs, full."""
    async with pooled_api(settings.with_overrides(pool_cli=size), backend, images, quotas) as api:
        await until_pool_holds(pool_of(api), VmType.CLI, size)
        yield api, pool_of(api)


async def test_a_slow_workspace_mount_in_a_hand_out_does_not_hold_back_another_users_create(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The host-wide admission lock was held through the hand-out's mount: one slow mount made
    # every other create on the host wait for it.
    images = tmp_path / "image"
    async with full_pool(api_settings, fake_backend, images, 2, DEFAULT_QUOTAS) as (api, pool):
        pooled = list(pool._ready[VmType.CLI])
        slow = SlowMount(fake_backend, monkeypatch)
        ann = asyncio.create_task(
            api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        )
        await asyncio.wait_for(slow.attaching.wait(), NOT_HELD_S)

        bob = await asyncio.wait_for(
            api.client.post("/api/vms", json={"userId": "bob"}, headers=api.headers()), NOT_HELD_S
        )

        assert bob.status_code == 201, bob.text
        assert bob.json()["id"] in pooled  # handed out from the pool while ann's mount runs
        assert not ann.done()
        slow.go_on.set()
        handed = await ann
        assert handed.status_code == 201, handed.text
        assert {handed.json()["id"], bob.json()["id"]} == set(pooled)


async def test_a_users_second_create_during_their_slow_hand_out_is_still_held_to_their_limit(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While the hand-out mounts, the pooled VM's row is not yet ann's: had her next create been
    # admitted meanwhile, she would end with two CLI VMs where one is allowed.
    one_each = Quotas(
        per_user={VmType.CLI: 1, VmType.BROWSER: 1},
        max_browser_vms=2,
        memory_limit_mib=64 * 1024,
    )
    images = tmp_path / "image"
    async with full_pool(api_settings, fake_backend, images, 2, one_each) as (api, _):
        slow = SlowMount(fake_backend, monkeypatch)
        first = asyncio.create_task(
            api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        )
        await asyncio.wait_for(slow.attaching.wait(), NOT_HELD_S)
        second = asyncio.create_task(
            api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        )
        await asyncio.sleep(0.2)
        assert not second.done()  # her turn waits for the first hand-out's end
        slow.go_on.set()

        assert (await first).status_code == 201
        assert_error(await second, 409, "quota_exceeded")
        listed = (await api.client.get("/api/vms", headers=api.headers())).json()["vms"]
        assert [vm["userId"] for vm in listed] == ["ann"]
