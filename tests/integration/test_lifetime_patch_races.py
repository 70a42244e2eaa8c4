"""``PATCH /api/vms/{id}`` at once from several callers, on SQLite and PostgreSQL: each lifetime
field a caller gives sticks, whatever the others set meanwhile, and the running time used so far
is left as it was; the store's compare-and-set on fields (``update_if``) under it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import NotFound
from hearth.store import Store
from hearth.vm.types import LifetimeAction, VmState
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.integration.store_fixtures import new_vm


@pytest.fixture
async def api_fake(api_settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(api_settings, FakeBackend(), tmp_path / "image") as api:
        yield api


async def test_concurrent_patches_of_different_fields_all_stick(api_fake: Api) -> None:
    api = api_fake
    created = await api.client.post(
        "/api/vms",
        json={"userId": "ann", "timeoutS": 7200, "idleTimeoutS": 900},
        headers=api.headers(),
    )
    assert created.status_code == 201, created.text
    url = f"/api/vms/{created.json()['id']}"
    bodies = [
        {"timeoutS": 60},
        {"idleTimeoutS": 30},
        {"timeoutAction": "pause"},
        {"idleAction": "destroy"},
        {"autoResume": False},
    ]
    answers = await asyncio.gather(
        *(api.client.patch(url, json=body, headers=api.headers()) for body in bodies)
    )
    assert [answer.status_code for answer in answers] == [200] * len(bodies)
    final = (await api.client.get(url, headers=api.headers())).json()
    assert {name: final[name] for body in bodies for name in body} == {
        "timeoutS": 60,
        "idleTimeoutS": 30,
        "timeoutAction": "pause",
        "idleAction": "destroy",
        "autoResume": False,
    }


async def test_a_patch_of_timeout_keeps_the_running_time_used(api_fake: Api) -> None:
    api = api_fake
    created = await api.client.post(
        "/api/vms", json={"userId": "ann", "timeoutS": 7200}, headers=api.headers()
    )
    vm_id = created.json()["id"]
    before = await api.ctl.store.vms.update(vm_id, lifetime_used_s=100.0)
    patched = await api.client.patch(
        f"/api/vms/{vm_id}", json={"timeoutS": 60}, headers=api.headers()
    )
    after = await api.ctl.store.vms.get(vm_id)
    assert patched.json()["timeoutS"] == 60
    assert (after.lifetime_used_s, after.running_since) == (100.0, before.running_since)


async def test_update_if_sets_fields_only_while_the_expected_ones_hold(
    store: Store, backend: str
) -> None:
    await store.users.ensure("ann")
    vm = await store.vms.insert(new_vm("ann", status=VmState.READY, timeout_s=None))

    changed = await store.vms.update_if(
        vm.id, {"timeout_s": None, "idle_action": "pause"}, timeout_s=60
    )
    assert changed is not None
    assert changed.timeout_s == 60

    stale = await store.vms.update_if(
        vm.id, {"timeout_s": None}, idle_action=LifetimeAction.DESTROY
    )
    assert stale is None
    assert (await store.vms.get(vm.id)).idle_action is LifetimeAction.PAUSE

    with pytest.raises(NotFound):
        await store.vms.update_if("vm-none", {"timeout_s": 60}, timeout_s=1)
