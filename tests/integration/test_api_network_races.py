"""A CLI VM's egress policy when the store refuses or delays one write, in process over the fake
backend on SQLite and PostgreSQL: changes to one VM's policy never interleave, so a refused one
is undone without undoing another and what its proxy enforces is what is stored; a change
made while a path opens waits for it; a VM closed while its policy is being stored leaves
nothing stored; a wake whose save is refused keeps the VM's stored policy for the next wake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from hearth.config import Settings
from hearth.control.network import CliNetworks
from hearth.store import Store
from hearth.store.records import EgressRecord
from hearth.vm.types import VmState
from hearth_agent.wire import Provider
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.integration.test_api_hibernate import new_vm, post
from tests.integration.test_api_network import connect_through

LOOPBACK = "127.0.0.1"
# Long enough for a change started meanwhile to reach its first wait (the lock, or its write).
SETTLE_S = 0.1


class HeldWrite:
    """The store's ``egress.put`` with its first call held until ``release`` and then refused
    (``fail``) or written; every other call is written at once."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> None:
        self.real = store.egress.put
        self.fail = fail
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.held: EgressRecord | None = None
        monkeypatch.setattr(store.egress, "put", self.put)

    async def put(self, record: EgressRecord) -> None:
        if self.held is not None:
            return await self.real(record)
        self.held = record
        self.entered.set()
        await self.release.wait()
        if self.fail:
            raise OperationalError("INSERT INTO vm_egress", {}, Exception("database is locked"))
        return await self.real(record)


@pytest.fixture
async def api_pinned(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path, echo_port: int
) -> AsyncIterator[Api]:
    """The controller over the fake backend; ``stand-in.test:443`` and codex's
    ``chatgpt.com:443`` pinned to the loopback echo server."""
    echo = f"{LOOPBACK}:{echo_port}"
    settings = api_settings.with_overrides(
        egress_pins=(("stand-in.test:443", echo), ("chatgpt.com:443", echo))
    )
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        yield api


def networks_of(api: Api) -> CliNetworks:
    networks = api.ctl.vms.networks
    assert networks is not None
    return networks


def proxy_port(api: Api, vm_id: str) -> int:
    (forward,) = api.backend.running[vm_id].spec.guest_forwards
    return forward.host_port


async def assert_enforced_is_stored(api: Api, vm_id: str) -> EgressRecord:
    stored = await api.ctl.store.egress.get(vm_id)
    assert stored is not None
    policy = networks_of(api).policy(vm_id)
    assert (set(stored.providers), stored.allow_out, stored.deny_out) == (
        policy.providers,
        policy.allow_out,
        policy.deny_out,
    )
    return stored


async def overlapping(
    held: HeldWrite, first: Awaitable[object], second: Awaitable[object]
) -> list[object]:
    """Run ``first`` until its write is held, then ``second`` until its first wait; release the
    write; each one's outcome (its result, or the error it raised)."""
    started = asyncio.ensure_future(first)
    await held.entered.wait()
    meanwhile = asyncio.ensure_future(second)
    await asyncio.sleep(SETTLE_S)
    held.release.set()
    return await asyncio.gather(started, meanwhile, return_exceptions=True)


async def beside_a_refused_change(api: Api, vm_id: str, change: Awaitable[object]) -> object:
    """``change``, made while the VM's PUT of ``allowOut: [other.test]`` is being stored, which
    the store then refuses; its outcome."""
    with pytest.MonkeyPatch.context() as patched:
        refused, outcome = await overlapping(
            HeldWrite(api.ctl.store, patched, fail=True),
            networks_of(api).set_policy(vm_id, allow_out=["other.test"], deny_out=[]),
            change,
        )
    assert isinstance(refused, OperationalError)
    return outcome


async def test_a_refused_policy_change_does_not_undo_one_made_while_it_was_stored(
    api_pinned: Api,
) -> None:
    api, vm_id = api_pinned, await new_vm(api_pinned)
    change = networks_of(api).set_policy(vm_id, allow_out=["stand-in.test"], deny_out=[])
    assert await beside_a_refused_change(api, vm_id, change) == 0
    stored = await assert_enforced_is_stored(api, vm_id)
    assert stored.allow_out == ("stand-in.test",)
    assert await connect_through(proxy_port(api, vm_id), "stand-in.test:443") == 200


async def test_a_credential_delivered_while_a_refused_change_was_stored_keeps_its_api_open(
    api_pinned: Api,
) -> None:
    api, vm_id = api_pinned, await new_vm(api_pinned)
    delivery = networks_of(api).allow_provider(vm_id, Provider.CODEX)  # as a delivery does
    assert await beside_a_refused_change(api, vm_id, delivery) is None
    stored = await assert_enforced_is_stored(api, vm_id)
    assert (stored.providers, stored.allow_out) == ({Provider.CODEX}, ())
    port = proxy_port(api, vm_id)
    assert await connect_through(port, "chatgpt.com:443") == 200
    assert await connect_through(port, "other.test:443") == 403


async def test_a_vm_closed_while_its_policy_was_stored_leaves_no_stored_policy(
    api_pinned: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, networks = api_pinned, networks_of(api_pinned)
    vm_id = await new_vm(api)
    outcomes = await overlapping(
        HeldWrite(api.ctl.store, monkeypatch, fail=False),
        networks.set_policy(vm_id, allow_out=["stand-in.test"], deny_out=[]),
        networks.close(vm_id),
    )
    assert outcomes == [0, None]
    assert not networks.has_path(vm_id)
    assert await api.ctl.store.egress.get(vm_id) is None


async def test_a_change_made_while_a_path_opens_is_enforced_and_stored(
    api_pinned: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PUT during a wake, while the new path's port is being stored: it waits for the open.
    api, networks = api_pinned, networks_of(api_pinned)
    vm_id = await new_vm(api)
    assert (await post(api, vm_id, "hibernate")).json()["status"] == "hibernated"
    woken, changed = await overlapping(
        HeldWrite(api.ctl.store, monkeypatch, fail=False),
        post(api, vm_id, "resume"),
        networks.set_policy(vm_id, allow_out=["stand-in.test"], deny_out=[]),
    )
    assert isinstance(woken, httpx.Response)
    assert woken.json()["status"] == "ready"
    assert changed == 0
    stored = await assert_enforced_is_stored(api, vm_id)
    assert (stored.allow_out, stored.port) == (("stand-in.test",), proxy_port(api, vm_id))
    assert await connect_through(proxy_port(api, vm_id), "stand-in.test:443") == 200


async def test_a_wake_whose_save_is_refused_keeps_the_vms_policy_for_the_next_wake(
    api_pinned: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_pinned
    vm_id = await new_vm(api)
    url = f"/api/vms/{vm_id}/network"
    wanted = {"allowOut": ["stand-in.test"], "denyOut": ["bad.test"]}
    assert (await api.client.put(url, json=wanted, headers=api.headers())).status_code == 200
    assert (await post(api, vm_id, "hibernate")).json()["status"] == "hibernated"
    with monkeypatch.context() as patched:
        held = HeldWrite(api.ctl.store, patched, fail=True)
        held.release.set()
        with pytest.raises(OperationalError):
            await api.ctl.vms.resume(vm_id)
    assert (await api.ctl.store.vms.get(vm_id)).status is VmState.HIBERNATED
    assert not networks_of(api).has_path(vm_id)
    stored = await api.ctl.store.egress.get(vm_id)
    assert stored is not None
    assert (stored.allow_out, stored.deny_out) == (("stand-in.test",), ("bad.test",))
    # The store is back: the next wake goes on with the user's policy.
    woken = await post(api, vm_id, "resume")
    assert (woken.status_code, woken.json()["status"]) == (200, "ready"), woken.text
    shown = (await api.client.get(url, headers=api.headers())).json()
    assert (shown["allowOut"], shown["denyOut"]) == (["stand-in.test"], ["bad.test"])
    assert await connect_through(proxy_port(api, vm_id), "stand-in.test:443") == 200
