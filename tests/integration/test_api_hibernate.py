"""Hibernation in process, on SQLite and PostgreSQL, over the fake backend: the API's rules
(``POST /api/vms/{id}/hibernate``, resume waking, 409s, 501), the keys sealed in the row and
nowhere else, admission (a hibernated VM holds no memory), controller restarts, the
``hibernate`` lifetime action and autoResume. What only a real VM shows (memory, disk and
processes intact, encryption at rest, e2fsck) is in ``tests/vm/test_hibernate.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.errors import NotSupported, VmError
from hearth.store import VmRecord
from hearth.store.records import SEALED_KEYS_FIELDS
from hearth.vm.types import BootMode, GuestForward, Vm, VmSpec, VmState, VmType
from hearth_agent.wire import Provider
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import (
    DEFAULT_QUOTAS,
    Api,
    assert_error,
    running_api,
    until_status,
)
from tests.integration.test_api_network import connect_through

CHECK_S = 0.05


@pytest.fixture
def settings(api_settings: Settings) -> Settings:
    """Lifetimes looked at every ``CHECK_S``."""
    return api_settings.with_overrides(lifetime_check_interval_s=CHECK_S)


@pytest.fixture
async def api_h(
    settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller over the fake backend."""
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        yield api


async def new_vm(api: Api, user: str = "ann", **body: Any) -> str:
    """A ready CLI VM of ``user``'s; its id."""
    created = await api.client.post(
        "/api/vms", json={"userId": user, **body}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def post(api: Api, vm_id: str, action: str) -> Any:
    """``POST /api/vms/{id}/{action}`` as the admin."""
    return await api.client.post(f"/api/vms/{vm_id}/{action}", headers=api.headers())


async def test_a_hibernated_vm_holds_only_sealed_keys_and_wakes_with_them(api_h: Api) -> None:
    api = api_h
    vm_id = await new_vm(api)
    disk_key = api.ctl.vms.live[vm_id].disk_key
    assert disk_key is not None
    answer = await post(api, vm_id, "hibernate")
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert shown["status"] == "hibernated"
    assert shown["hibernatedAt"] is not None
    assert vm_id not in api.ctl.vms.live
    assert vm_id in api.backend.hibernated
    record = await api.ctl.store.vms.get(vm_id)
    assert record.pid is None
    # Both keys are in the row, sealed: neither appears in it in clear.
    sealed = [getattr(record, field) for field in SEALED_KEYS_FIELDS]
    assert all(value is not None for value in sealed)
    state_key = api.backend.hibernated[vm_id][0]
    assert disk_key not in record.keys_ciphertext
    assert state_key not in record.keys_ciphertext
    keys = api.ctl.vms.keys.open(record)
    assert keys is not None
    assert (keys.disk, keys.state) == (disk_key, state_key)

    woken = await post(api, vm_id, "resume")
    assert woken.status_code == 200, woken.text
    assert woken.json()["status"] == "ready"
    assert woken.json()["bootMode"] == "wake"
    assert api.ctl.vms.alive(vm_id)
    # The state key is spent with the state: only the disk key stays.
    keys = api.ctl.vms.keys.open(await api.ctl.store.vms.get(vm_id))
    assert keys is not None
    assert (keys.disk, keys.state) == (disk_key, None)


async def test_hibernate_of_a_vm_not_ready_or_paused_is_409_naming_its_status(
    api_h: Api,
) -> None:
    api = api_h
    vm_id = await new_vm(api)
    assert (await post(api, vm_id, "pause")).status_code == 200
    assert (await post(api, vm_id, "hibernate")).json()["status"] == "hibernated"
    error = assert_error(await post(api, vm_id, "hibernate"), 409, "conflict")
    assert "is hibernated" in error["message"]
    error = assert_error(await post(api, vm_id, "pause"), 409, "conflict")
    assert "is hibernated" in error["message"]
    # Booting.
    api.backend.hold = asyncio.Event()
    created = await api.client.post(
        "/api/vms?wait=false", json={"userId": "bob"}, headers=api.headers()
    )
    booting = created.json()["id"]
    await until_status(api, booting, "booting")  # past "creating", held in the backend
    error = assert_error(await post(api, booting, "hibernate"), 409, "conflict")
    assert "is booting" in error["message"]
    api.backend.hold.set()
    # A Browser VM lives for one login.
    browser = await api.client.post(
        "/api/vms", json={"userId": "cid", "vmType": "browser"}, headers=api.headers()
    )
    error = assert_error(await post(api, browser.json()["id"], "hibernate"), 409, "conflict")
    assert "browser VM" in error["message"]
    # Another user's VM is not there; resuming a ready one is a conflict.
    assert_error(
        await api.client.post(
            f"/api/vms/{vm_id}/hibernate", headers=api.headers(await api.user_key("zed"))
        ),
        404,
        "not_found",
    )
    ready = await new_vm(api, "dan")
    error = assert_error(await post(api, ready, "resume"), 409, "conflict")
    assert "only a paused or hibernated VM" in error["message"]


async def test_a_save_the_vmm_refuses_leaves_the_vm_as_it_was(api_h: Api) -> None:
    api = api_h
    vm_id = await new_vm(api)
    api.backend.fail_next = NotSupported("the fake backend cannot hibernate VMs yet")
    error = assert_error(await post(api, vm_id, "hibernate"), 501, "not_supported")
    assert "cannot hibernate" in error["message"]
    record = await api.ctl.store.vms.get(vm_id)
    assert record.status is VmState.READY
    assert record.running_since is not None, "its running time stopped counting"
    assert api.ctl.vms.alive(vm_id)


async def test_a_paused_vm_runs_again_for_the_pull_back_and_is_saved_paused(api_h: Api) -> None:
    # The CLI may have rotated its tokens since their delivery: they are read back before a
    # hibernation as before a destroy, which needs the agent; a paused VM runs for it, its row
    # already "hibernating" so nothing else takes it, and is paused again for the save.
    api = api_h
    vm_id = await new_vm(api)
    assert (await post(api, vm_id, "pause")).json()["status"] == "paused"
    token = api.ctl.vms.agent_token(vm_id)
    seen: list[tuple[str, str, str, str | None]] = []
    saved: list[str] = []

    async def observe(record: VmRecord, agent_token: str | None) -> None:
        now = await api.ctl.store.vms.get(record.id)
        vm = api.backend.running[record.id]
        seen.append((record.status.value, now.status.value, vm.state.value, agent_token))

    hibernate = api.backend.hibernate

    async def save(vm: Vm, state_key: bytes) -> None:
        saved.append(vm.state.value)
        await hibernate(vm, state_key)

    api.ctl.vms.before_destroy = (*api.ctl.vms.before_destroy, observe)
    api.backend.hibernate = save  # type: ignore[method-assign]
    hibernated = await post(api, vm_id, "hibernate")
    assert hibernated.status_code == 200, hibernated.text
    assert hibernated.json()["status"] == "hibernated"
    assert seen == [("paused", "hibernating", "ready", token)]
    assert saved == ["paused"]


async def test_a_pull_back_that_cannot_reach_a_paused_vm_does_not_stop_its_hibernation(
    api_h: Api,
) -> None:
    api = api_h
    vm_id = await new_vm(api)
    assert (await post(api, vm_id, "pause")).json()["status"] == "paused"
    called: list[str] = []

    async def observe(record: VmRecord, agent_token: str | None) -> None:
        called.append(record.id)

    async def refuse(vm: Vm) -> None:
        raise VmError("the VMM did not answer")

    api.ctl.vms.before_destroy = (*api.ctl.vms.before_destroy, observe)
    api.backend.resume = refuse  # type: ignore[method-assign]
    hibernated = await post(api, vm_id, "hibernate")
    assert hibernated.status_code == 200, hibernated.text
    assert hibernated.json()["status"] == "hibernated"
    assert called == [], "a hook ran against an agent that could not answer"


async def test_the_vm_monitor_does_not_take_a_hibernation_for_a_crash(api_h: Api) -> None:
    api = api_h
    vm_id = await new_vm(api)
    api.backend.hold = asyncio.Event()
    saving = asyncio.create_task(post(api, vm_id, "hibernate"))
    while vm_id in api.backend.running:
        await asyncio.sleep(0.01)
    # Its VMM has ended, its save is not reported yet: the monitor must leave it be.
    assert await api.ctl.vms.watch_once() == []
    api.backend.hold.set()
    assert (await saving).json()["status"] == "hibernated"
    assert vm_id in api.backend.hibernated


async def test_a_corrupt_saved_state_fails_the_vm_with_why(api_h: Api) -> None:
    api = api_h
    vm_id = await new_vm(api)
    await post(api, vm_id, "hibernate")
    api.backend.corrupt_next_wake = True
    error = assert_error(await post(api, vm_id, "resume"), 500, "saved_state_corrupt")
    assert "does not open" in error["message"]
    record = await api.ctl.store.vms.get(vm_id)
    assert record.status is VmState.FAILED
    assert record.error is not None
    assert "does not open" in record.error
    assert all(getattr(record, field) is None for field in SEALED_KEYS_FIELDS)
    events = [e.type for e in await api.ctl.events.list() if e.vm_id == vm_id]
    assert events[-1] == "vm.failed"


async def test_a_wake_that_fails_after_its_state_was_read_fails_the_vm_saying_why(
    api_h: Api,
) -> None:
    api = api_h
    vm_id = await new_vm(api)
    await post(api, vm_id, "hibernate")
    api.backend.fail_next_wake = VmError("the agent did not answer after the load")
    assert (await post(api, vm_id, "resume")).status_code >= 500
    record = await api.ctl.store.vms.get(vm_id)
    assert record.status is VmState.FAILED  # not "hibernated": its saved state is spent
    assert record.error is not None
    assert "did not answer after the load" in record.error
    events = [e.type for e in await api.ctl.events.list() if e.vm_id == vm_id]
    assert events[-1] == "vm.failed"
    assert await api.ctl.store.egress.get(vm_id) is None


async def test_a_wake_that_fails_before_its_state_is_read_leaves_it_hibernated(
    api_h: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_h
    vm_id = await new_vm(api)
    await post(api, vm_id, "hibernate")
    networks = api.ctl.vms.networks
    assert networks is not None

    async def no_path(vm_id: str) -> GuestForward:
        raise VmError("no egress path today")

    with monkeypatch.context() as patched:
        patched.setattr(networks, "open", no_path)
        assert (await post(api, vm_id, "resume")).status_code >= 500
    record = await api.ctl.store.vms.get(vm_id)
    assert record.status is VmState.HIBERNATED  # not stuck "booting"
    assert vm_id in api.backend.hibernated
    woken = await post(api, vm_id, "resume")
    assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text


async def test_a_vm_whose_sealed_keys_do_not_open_fails_its_wake_and_is_told(api_h: Api) -> None:
    api = api_h
    vm_id = await new_vm(api)
    await post(api, vm_id, "hibernate")
    hibernated = await api.ctl.store.vms.get(vm_id)
    assert hibernated.keys_ciphertext is not None
    await api.ctl.store.vms.update(vm_id, keys_ciphertext=b"\0" * len(hibernated.keys_ciphertext))
    error = assert_error(await post(api, vm_id, "resume"), 500, "saved_state_corrupt")
    assert "do not open" in error["message"]
    record = await api.ctl.store.vms.get(vm_id)
    assert record.status is VmState.FAILED
    assert record.workdir == hibernated.workdir  # its files are still found, for inspection
    events = [e.type for e in await api.ctl.events.list() if e.vm_id == vm_id]
    assert events[-1] == "vm.failed"


@pytest.mark.parametrize("kept", [True, False], ids=["state kept", "state lost"])
async def test_a_hibernation_that_fails_after_its_vmm_ended_is_settled_by_what_it_left(
    api_h: Api, kept: bool
) -> None:
    # A step after the save failed (its record, say), the VMM already gone: the row must not
    # say "ready" over a VM that no longer runs.
    api = api_h
    vm_id = await new_vm(api)
    api.backend.fail_after_save = VmError("the record could not be written")
    api.backend.lose_failed_save = not kept
    answer = await post(api, vm_id, "hibernate")
    record = await api.ctl.store.vms.get(vm_id)
    events = [e.type for e in await api.ctl.events.list() if e.vm_id == vm_id]
    if kept:
        assert (answer.status_code, answer.json()["status"]) == (200, "hibernated"), answer.text
        assert record.status is VmState.HIBERNATED
        woken = await post(api, vm_id, "resume")
        assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text
    else:
        assert answer.status_code >= 500
        assert record.status is VmState.FAILED
        assert record.error is not None
        assert "could not be written" in record.error
        assert events[-1] == "vm.failed"
        assert await api.ctl.store.egress.get(vm_id) is None


async def test_a_hibernated_vm_holds_no_memory_and_waking_needs_room_again(
    settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    quotas = dataclasses.replace(DEFAULT_QUOTAS, memory_limit_mib=600)
    async with running_api(settings, fake_backend, tmp_path / "image", quotas=quotas) as api:
        first = await new_vm(api, mem_mib=512)
        assert_error(
            await api.client.post(
                "/api/vms", json={"userId": "bob", "memMib": 512}, headers=api.headers()
            ),
            429,
            "capacity_exhausted",
        )
        await post(api, first, "hibernate")
        second = await new_vm(api, "bob", mem_mib=512)
        assert_error(await post(api, first, "resume"), 429, "capacity_exhausted")
        assert (await api.ctl.store.vms.get(first)).status is VmState.HIBERNATED
        # Still one of ann's VMs: the per-user count keeps its place.
        assert await api.ctl.store.vms.count_active(user_id="ann", vm_type=VmType.CLI) == 1
        await api.client.delete(f"/api/vms/{second}", headers=api.headers())
        assert (await post(api, first, "resume")).json()["status"] == "ready"


async def test_a_hibernated_vm_survives_a_controller_restart(
    settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        vm_id = await new_vm(api)
        await post(api, vm_id, "hibernate")
        # One caught mid-save by the restart: its VMM holds it, stopped.
        saving = await new_vm(api, "bob")
        await api.ctl.store.vms.transition(saving, VmState.READY, VmState.HIBERNATING)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        assert (await api.ctl.store.vms.get(vm_id)).status is VmState.HIBERNATED
        assert vm_id in fake_backend.hibernated, "the restart reaped a hibernated VM"
        assert (await api.ctl.store.vms.get(saving)).status is VmState.PAUSED
        # The new controller opens the keys the first one sealed.
        woken = await post(api, vm_id, "resume")
        assert woken.status_code == 200, woken.text
        assert woken.json()["status"] == "ready"
        assert (await post(api, saving, "resume")).json()["status"] == "ready"


async def test_a_controller_that_ends_after_the_save_leaves_a_vm_the_next_one_wakes(
    settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    """The state's key is sealed in the row before the save: a controller killed once the
    VMM has saved and ended, before its row read "hibernated", loses nothing."""
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        vm_id = await new_vm(api)
        # The backend saves and ends the VM, then the controller is gone before it says so.
        fake_backend.hold = asyncio.Event()
        saving = asyncio.create_task(post(api, vm_id, "hibernate"))
        await until_status(api, vm_id, "hibernating")
        for _ in range(200):
            if vm_id in fake_backend.hibernated:
                break
            await asyncio.sleep(0.02)
        assert vm_id not in fake_backend.running
        saving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saving
    fake_backend.hold = None
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        record = await api.ctl.store.vms.get(vm_id)
        assert record.status is VmState.HIBERNATED
        assert record.hibernated_at is not None
        woken = await post(api, vm_id, "resume")
        assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text


async def test_a_wake_cut_short_by_a_restart_loses_nothing_that_was_still_saved(
    settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    """A controller killed mid-wake leaves the row ``booting`` (a wake). The next one puts a
    VM whose saved state is still there back to hibernated (the guest never ran), adopts one
    whose VMM runs from the consumed state as paused, and fails one whose state was read and
    whose VMM is gone, saying why."""
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        ids = {user: await new_vm(api, user) for user in ("ann", "bob", "cy")}
        for vm_id in ids.values():
            await post(api, vm_id, "hibernate")
            await api.ctl.store.vms.transition(
                vm_id, VmState.HIBERNATED, VmState.BOOTING, boot_mode=BootMode.WAKE
            )
        # bob's state was read into a VMM that runs; cy's VMM died after reading it.
        for user in ("bob", "cy"):
            fake_backend.hibernated.pop(ids[user])
        fake_backend.running[ids["bob"]] = Vm(id=ids["bob"], spec=VmSpec(), backend="fake")
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        ann = await api.ctl.store.vms.get(ids["ann"])
        assert ann.status is VmState.HIBERNATED
        assert ids["ann"] in fake_backend.hibernated
        woken = await post(api, ids["ann"], "resume")
        assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text

        bob = await api.ctl.store.vms.get(ids["bob"])
        assert bob.status is VmState.PAUSED
        assert fake_backend.running[ids["bob"]].state is VmState.PAUSED
        assert (await post(api, ids["bob"], "resume")).json()["status"] == "ready"

        cy = await api.ctl.store.vms.get(ids["cy"])
        assert cy.status is VmState.FAILED
        assert cy.error is not None
        assert "wake was cut short" in cy.error


async def test_an_idle_vm_is_hibernated_and_auto_resumed_its_hibernated_time_not_counted(
    api_h: Api,
) -> None:
    api = api_h
    vm_id = await new_vm(api, idleTimeoutS=1, idleAction="hibernate", timeoutS=3600)
    for _ in range(500):  # the row first, then its event: wait for both
        hibernated = (await api.ctl.store.vms.get(vm_id)).status is VmState.HIBERNATED
        told = [e for e in await api.ctl.events.list() if e.type == "vm.timed_out"]
        if hibernated and told:
            break
        await asyncio.sleep(0.02)
    record = await api.ctl.store.vms.get(vm_id)
    assert record.status is VmState.HIBERNATED
    assert record.running_since is None
    used = record.lifetime_used_s
    await asyncio.sleep(0.3)
    shown = (await api.client.get(f"/api/vms/{vm_id}", headers=api.headers())).json()
    assert shown["lifetimeUsedS"] == pytest.approx(used, abs=0.01), "hibernated time counted"
    woken = await api.ctl.lifetimes.ensure_running(await api.ctl.store.vms.get(vm_id))
    assert woken.status is VmState.READY
    events = [e for e in await api.ctl.events.list() if e.vm_id == vm_id]
    timed_out = [e for e in events if e.type == "vm.timed_out"]
    assert json.loads(timed_out[0].data)["action"] == "hibernate"
    assert events[-1].type == "vm.auto_resumed"
    # PATCH takes the action too.
    patched = await api.client.patch(
        f"/api/vms/{vm_id}", json={"timeoutAction": "hibernate"}, headers=api.headers()
    )
    assert patched.json()["timeoutAction"] == "hibernate"


async def test_a_woken_vm_keeps_what_its_network_let_through_across_a_restart(
    settings: Settings, fake_backend: FakeBackend, tmp_path: Path, echo_port: int
) -> None:
    # The providers its credentials opened and the user's allowOut/denyOut come back with the
    # VM, on a new path, even when another controller wakes it.
    settings = settings.with_overrides(
        egress_pins=(("stand-in.test:443", f"127.0.0.1:{echo_port}"),)
    )
    wanted = {"allowOut": ["stand-in.test"], "denyOut": ["api.openai.com"]}
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        vm_id = await new_vm(api)
        url = f"/api/vms/{vm_id}/network"
        assert (await api.client.put(url, json=wanted, headers=api.headers())).status_code == 200
        networks = api.ctl.vms.networks
        assert networks is not None
        await networks.allow_provider(vm_id, Provider.CODEX)  # as a delivery does
        before = (await api.client.get(url, headers=api.headers())).json()
        assert (await post(api, vm_id, "hibernate")).json()["status"] == "hibernated"
        assert not networks.has_path(vm_id)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        woken = await post(api, vm_id, "resume")
        assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text
        after = (await api.client.get(url, headers=api.headers())).json()
        assert after["providers"] == before["providers"] == ["codex"]
        for key in ("allowOut", "denyOut", "allow"):
            assert after[key] == before[key], key
        # Enforced by the new path the woken VM's spec carries, not only stored.
        (forward,) = fake_backend.running[vm_id].spec.guest_forwards
        assert await connect_through(forward.host_port, "stand-in.test:443") == 200
        assert await connect_through(forward.host_port, "api.openai.com:443") == 403
        # Destroyed, it leaves no stored policy behind.
        assert (await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())).is_success
        assert await api.ctl.store.egress.get(vm_id) is None
