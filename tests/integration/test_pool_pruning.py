"""The warm pool's failed VMs, through the controller in process over the fake VM backend, on
SQLite and PostgreSQL: the newest few keep their failed rows, older ones are destroyed, and no
user's VM is ever touched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.control.pool import FAILED_KEPT, POOL_USER
from hearth.errors import VmError
from hearth.vm.types import Vm, VmSpec, VmState, VmType
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api
from tests.integration.test_api_pool import pool_of, pooled_api, until_pool_holds

POLL_S = 0.05
POLL_ROUNDS = 200


class FailingCreates:
    """Every VM the fake VMM starts fails, as when the template's agent never answers; the ids
    of those it tried."""

    def __init__(self, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tried: list[str] = []
        monkeypatch.setattr(backend, "create", self.create)

    async def create(self, image: Any, spec: VmSpec, *, vm_id: str, **kw: Any) -> Vm:
        self.tried.append(vm_id)
        raise VmError(f"VM {vm_id}: the template's agent never answered")


async def pool_rows(api: Api, status: VmState) -> list[str]:
    """The ids of the pool's rows in ``status``, oldest first."""
    return [r.id for r in await api.ctl.store.vms.list(user_id=POOL_USER, statuses=[status])]


async def test_failed_refills_leave_only_the_newest_few_failed_rows_and_no_users_vm_is_pruned(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each failed refill left a failed row that the pool's user owns, and nothing ever ended
    # it: with refills failing for a day, thousands of them.
    failing = FailingCreates(fake_backend, monkeypatch)
    settings = api_settings.with_overrides(pool_cli=1)
    async with pooled_api(settings, fake_backend, tmp_path / "image", DEFAULT_QUOTAS) as api:
        # A user's VM that failed as well: theirs to see and destroy, never the pool's to prune.
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert made.status_code >= 500, made.text
        [ann_vm] = [row.id for row in await api.ctl.store.vms.list(user_id="ann")]
        for _ in range(POLL_ROUNDS):  # refills 0.05, 0.1, 0.2, 0.4 s apart
            if len(failing.tried) >= FAILED_KEPT + 3:
                break
            await asyncio.sleep(POLL_S)
        monkeypatch.undo()  # no more failures from here
        refills = [vm_id for vm_id in failing.tried if vm_id != ann_vm]
        assert len(refills) > FAILED_KEPT + 1, refills
        await until_pool_holds(pool_of(api), VmType.CLI, 1)

        for _ in range(POLL_ROUNDS):  # the pass that refilled prunes as it ends
            if await pool_rows(api, VmState.FAILED) == refills[-FAILED_KEPT:]:
                break
            await asyncio.sleep(POLL_S)
        assert await pool_rows(api, VmState.FAILED) == refills[-FAILED_KEPT:]
        assert set(await pool_rows(api, VmState.DESTROYED)) == set(refills[:-FAILED_KEPT])
        ann = await api.ctl.store.vms.get(ann_vm)
        assert (ann.status, ann.user_id) == (VmState.FAILED, "ann")
