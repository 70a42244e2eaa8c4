"""A credential delete against what moves at the same time, over VMs whose agents are real
processes on loopback: a VM being woken, a VM auto-resumed while the delete looks, a login's
delivery writing into a VM, two deliveries waking the same sleeping VM, and a vault document
that no longer opens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from hearth.agent_client import AgentClient
from hearth.bench.standins.documents import sample_document
from hearth.errors import NotFound
from hearth.store import VmRecord
from hearth.vm.types import Vm
from tests.agent_backend import AgentBackend
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error


def document_of(provider: str, marker: str = "a") -> bytes:
    return json.dumps(sample_document(provider, marker)).encode()


async def login(api: Api, user: str, provider: str, vm_id: str) -> None:
    """What a completed login leaves: the document captured, then delivered into ``vm_id``."""
    await api.ctl.credentials.capture(user, provider, document_of(provider))
    await api.ctl.delivery.deliver(user, provider, vm_id)


def agent_of(api: Api, vm_id: str) -> AgentClient:
    return AgentClient(api.ctl.vms.live_vm(vm_id).agent_url or "", api.ctl.vms.agent_token(vm_id))


async def holds(api: Api, vm_id: str, provider: str) -> bool:
    return bool((await agent_of(api, vm_id).credentials_facts(provider))["present"])


async def providers_open(api: Api, vm_id: str) -> list[str]:
    network = await api.client.get(f"/api/vms/{vm_id}/network", headers=api.headers())
    assert network.status_code == 200, network.text
    providers: list[str] = network.json()["providers"]
    return providers


async def status_of(api: Api, vm_id: str) -> str:
    return (await api.ctl.store.vms.get(vm_id)).status.value


async def sleeping_holder(api: Api, action: str) -> str:
    """A CLI VM of ann's holding her codex document, then paused or hibernated (``action``)."""
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "codex", vm_id)
    slept = await api.client.post(f"/api/vms/{vm_id}/{action}", headers=api.headers())
    assert slept.status_code == 200, slept.text
    return vm_id


async def assert_deleted_from(api: Api, vm_id: str) -> None:
    """A delete of ann's codex document answers that ``vm_id`` held it, which no longer does."""
    deleted = await api.client.delete("/api/credentials/ann/codex", headers=api.headers())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removedFrom"] == [vm_id]
    await assert_let_go(api, vm_id)


async def assert_let_go(api: Api, vm_id: str) -> None:
    """``vm_id`` holds no codex document of ann's, and the codex API is closed to it."""
    assert not await holds(api, vm_id, "codex")
    assert "codex" not in await providers_open(api, vm_id)


class WakesHeld:
    """The backend's wakes, each held (the VM booting) until ``release``; ``started`` is set
    once one is."""

    def __init__(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(api.backend, AgentBackend)
        self.real = api.backend.wake
        self.started, self.release = asyncio.Event(), asyncio.Event()
        monkeypatch.setattr(api.backend, "wake", self.wake)

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        self.started.set()
        await self.release.wait()
        return await self.real(vm, state_key)


async def test_a_delete_while_a_hibernated_holder_is_woken_is_refused_naming_it(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A waking VM is booting: neither asked (not ready) nor woken (not asleep), it came up
    # ready still holding the document, its provider's API open, after a delete answered 200.
    api, admin = agent_api, agent_api.headers()
    vm_id = await sleeping_holder(api, "hibernate")
    wakes = WakesHeld(api, monkeypatch)
    resume = asyncio.create_task(api.client.post(f"/api/vms/{vm_id}/resume", headers=admin))
    await wakes.started.wait()
    assert await status_of(api, vm_id) == "booting"

    refused = await api.client.delete("/api/credentials/ann/codex", headers=admin)

    message = assert_error(refused, 409, "conflict")["message"]
    assert f"VM {vm_id} is booting" in message
    assert await api.ctl.store.credentials.get("ann", "codex") is not None
    wakes.release.set()
    assert (await resume).status_code == 200
    await assert_deleted_from(api, vm_id)


async def test_a_delete_takes_the_document_from_a_vm_resumed_while_it_looks(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Running VMs and sleeping ones were listed apart: a VM paused at the first listing and
    # resumed (as an exec's autoResume does) before the second was in neither.
    api = agent_api
    vm_id = await sleeping_holder(api, "pause")
    list_vms = api.ctl.vms.list_vms

    async def listed_then_resumed(*, user_id: str | None = None) -> list[VmRecord]:
        records = await list_vms(user_id=user_id)
        if await status_of(api, vm_id) == "paused":
            await api.ctl.vms.resume(vm_id)
        return records

    monkeypatch.setattr(api.ctl.vms, "list_vms", listed_then_resumed)

    await assert_deleted_from(api, vm_id)

    assert await status_of(api, vm_id) == "ready"  # resumed by someone else: it runs on


class DeletedWhileWriting(AgentClient):
    """An agent client whose write lands while ``during`` (a delete) runs: ``during`` starts
    just before the write, which waits up to ``wait_s`` for it to finish."""

    def __init__(self, api: Api, vm_id: str, during: Any, wait_s: float) -> None:
        vm = api.ctl.vms.live_vm(vm_id)
        super().__init__(vm.agent_url or "", api.ctl.vms.agent_token(vm_id), vm_id=vm_id)
        self.target, self.during, self.wait_s = vm_id, during, wait_s
        self.task: asyncio.Task[Any] | None = None

    @classmethod
    async def into_new_vm(cls, api: Api, during: Any, wait_s: float) -> DeletedWhileWriting:
        """One for a new CLI VM of ann's, her codex document captured and not yet delivered."""
        vm_id = await vm_for(api, "ann")
        await api.ctl.credentials.capture("ann", "codex", document_of("codex"))
        return cls(api, vm_id, during, wait_s)

    async def put_credentials(self, provider: str, document: bytes) -> str:
        self.task = asyncio.ensure_future(self.during())
        await asyncio.wait({self.task}, timeout=self.wait_s)
        return await super().put_credentials(provider, document)

    async def deliver(self, api: Api) -> None:
        """Deliver ann's codex document into the VM through this client, as a login does."""
        await api.ctl.delivery.deliver_with(self, "ann", "codex", self.target, fresh=True)


async def test_a_delete_during_a_delivery_waits_for_it_and_takes_the_document_out(
    agent_api: Api,
) -> None:
    # The delete asked the VM before the write and deleted the vault's copy before the
    # delivery recorded it: it answered without the VM, and the document stayed there.
    api = agent_api
    agent = await DeletedWhileWriting.into_new_vm(
        api,
        lambda: api.client.delete("/api/credentials/ann/codex", headers=api.headers()),
        wait_s=1.0,
    )

    await agent.deliver(api)

    assert agent.task is not None
    deleted = await agent.task
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removedFrom"] == [agent.target]
    assert await api.ctl.store.credentials.get("ann", "codex") is None
    await assert_let_go(api, agent.target)


async def test_a_delivery_whose_document_is_deleted_elsewhere_while_it_writes_takes_it_out(
    agent_api: Api,
) -> None:
    # Another controller's delete does not take turns with this one's delivery: the vault's
    # row goes while the document is written, and the VM must not keep it.
    api = agent_api
    agent = await DeletedWhileWriting.into_new_vm(
        api, lambda: api.ctl.store.credentials.delete("ann", "codex"), wait_s=5.0
    )

    with pytest.raises(NotFound):
        await agent.deliver(api)

    await assert_let_go(api, agent.target)


async def test_two_deliveries_of_one_user_share_a_sleeping_holder_without_a_copy_left(
    agent_api: Api,
) -> None:
    # Both woke the paused holder; the first to finish paused it again while the second
    # still had to take its document out of it.
    api = agent_api
    first = await vm_for(api, "ann")
    await login(api, "ann", "claude_code", first)
    await login(api, "ann", "codex", first)
    admin = api.headers()
    assert (await api.client.post(f"/api/vms/{first}/pause", headers=admin)).status_code == 200
    second = await vm_for(api, "ann")
    for provider in ("claude_code", "codex"):
        await api.ctl.credentials.capture("ann", provider, document_of(provider, "new"))

    await asyncio.gather(
        *(api.ctl.delivery.deliver("ann", p, second) for p in ("claude_code", "codex"))
    )

    assert await status_of(api, first) == "paused"
    assert (await api.client.post(f"/api/vms/{first}/resume", headers=admin)).status_code == 200
    for provider in ("claude_code", "codex"):
        assert not await holds(api, first, provider), provider
        assert await holds(api, second, provider), provider


@pytest.mark.parametrize(
    ("provider", "delivered", "revocation"),
    [("codex", True, None), ("oidc", True, "not_configured"), ("oidc", False, "failed")],
)
async def test_a_delete_goes_on_when_the_vaults_document_no_longer_opens(
    agent_api: Api, provider: str, delivered: bool, revocation: str | None
) -> None:
    # Every delete opened the vault's document, though only oidc's revocation reads it: one
    # that no longer opened made each delete a 500, and the document stayed everywhere. An
    # oidc one's refresh token cannot be revoked, which the answer says (this controller has
    # no issuer: a VM's copy is "not_configured").
    api = agent_api
    vm_id = await vm_for(api, "ann")
    if delivered:
        await login(api, "ann", provider, vm_id)
    else:
        await api.ctl.credentials.capture("ann", provider, document_of(provider))
    record = await api.ctl.store.credentials.get("ann", provider)
    assert record is not None
    altered = bytes(b ^ 1 for b in record.ciphertext)
    await api.ctl.store.credentials.put(dataclasses.replace(record, ciphertext=altered))

    deleted = await api.client.delete(f"/api/credentials/ann/{provider}", headers=api.headers())

    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removedFrom"] == ([vm_id] if delivered else [])
    outcome = deleted.json()["revocation"]
    assert outcome == revocation or outcome.startswith(f"{revocation}: "), outcome
    assert await api.ctl.store.credentials.get("ann", provider) is None
    assert not await holds(api, vm_id, provider)
