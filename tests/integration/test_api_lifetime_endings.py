"""How VM lifetimes end, in process on SQLite and PostgreSQL over the fake backend.

An action the host's VMM cannot carry out (hibernate, where it cannot hibernate: Firecracker's
backend, here the fake with ``can_hibernate`` off) is refused when the lifetime is set, on
create and PATCH; a lifetime that holds one anyway (set before that was refused) destroys the
VM instead of trying again every round. A VM that ends (destroyed, failed, failed at a
restart) uses no more of its lifetime.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api, until_status
from tests.integration.test_api_lifetimes import CHECK_S, events_of, new_vm, told_once

SETTLE_S = 1.0  # how long an ended VM's lifetime is watched for not growing


@pytest.fixture
def settings(api_settings: Settings) -> Settings:
    """Settings whose lifetime check comes round every ``CHECK_S``."""
    return api_settings.with_overrides(lifetime_check_interval_s=CHECK_S)


@pytest.fixture
async def api_no_hibernate(settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    """The controller over a VMM that cannot hibernate."""
    backend = FakeBackend()
    backend.can_hibernate = False
    async with running_api(settings, backend, tmp_path / "image") as api:
        yield api


@pytest.mark.parametrize("field", ["timeoutAction", "idleAction"])
async def test_a_hibernate_action_where_the_vmm_cannot_hibernate_is_422_on_create_and_patch(
    api_no_hibernate: Api, field: str
) -> None:
    api = api_no_hibernate
    refused = await api.client.post(
        "/api/vms", json={"userId": "ann", field: "hibernate"}, headers=api.headers()
    )
    message = assert_error(refused, 422, "invalid_input")["message"]
    assert message.startswith(f"{field}: "), message
    assert "this host's VMM (fake) cannot hibernate VMs" in message
    assert await api.ctl.store.vms.list() == [], "a refused create left a row"
    vm = await new_vm(api, **{field: "pause"})
    url = f"/api/vms/{vm['id']}"
    patched = await api.client.patch(url, json={field: "hibernate"}, headers=api.headers())
    assert f"{field}: " in assert_error(patched, 422, "invalid_input")["message"]
    assert (await api.client.get(url, headers=api.headers())).json()[field] == "pause"


async def test_a_lifetime_whose_hibernate_cannot_be_done_destroys_the_vm_once_and_says_so(
    settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(settings, backend, tmp_path / "image") as api:
        vm = await new_vm(api, timeoutS=1, timeoutAction="hibernate")
        backend.can_hibernate = False  # a lifetime set before such ones were refused
        await until_status(api, vm["id"], "destroyed")
        told = await told_once(api, "vm.timed_out")
        assert (told["reason"], told["action"], told["insteadOf"]) == (
            "lifetime",
            "destroy",
            "hibernate",
        )
        await asyncio.sleep(10 * CHECK_S)
        assert len(await events_of(api, "vm.timed_out")) == 1
        assert backend.hibernated == {}


async def test_a_vm_that_ends_uses_no_more_of_its_lifetime(
    settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(settings, backend, tmp_path / "image") as api:
        destroyed, died, lost = [await new_vm(api, userId=user) for user in ("ann", "ben", "cy")]
        await asyncio.sleep(0.3)  # running time to bank
        await api.client.delete(f"/api/vms/{destroyed['id']}", headers=api.headers())
        backend.kill(died["id"])  # the monitor fails it
        await until_status(api, died["id"], "failed")
    backend.kill(lost["id"])  # its VMM ends while no controller runs: failed at the restart
    async with running_api(settings, backend, tmp_path / "image") as api:
        ended = [vm["id"] for vm in (destroyed, died, lost)]
        assert [(await api.ctl.store.vms.get(vm_id)).status.value for vm_id in ended] == [
            "destroyed",
            "failed",
            "failed",
        ]
        used = [await lifetime_used(api, vm_id) for vm_id in ended]
        await asyncio.sleep(SETTLE_S)
        assert [await lifetime_used(api, vm_id) for vm_id in ended] == used
        assert all(seconds >= 0.3 for seconds in used), used
        for vm_id in ended:
            assert (await api.ctl.store.vms.get(vm_id)).running_since is None


async def lifetime_used(api: Api, vm_id: str) -> float:
    """What ``GET /api/vms/{id}`` shows as ``lifetimeUsedS``."""
    shown = await api.client.get(f"/api/vms/{vm_id}", headers=api.headers())
    used = shown.json()["lifetimeUsedS"]
    assert isinstance(used, float)
    return used
