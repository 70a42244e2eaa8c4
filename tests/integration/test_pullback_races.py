"""A pull-back racing the vault: what happens to the stored document between the pull-back's
listing and its write wins. A credential deleted meanwhile stays deleted; a fresh login's
document captured meanwhile is kept as it is, even when the VM's refreshed copy expires later.
In process on SQLite and PostgreSQL, over VMs whose agents are real processes on loopback; the
race is made deterministic by running the other actor after the VM's agent answered and before
the pull-back writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hearth.agent_client import AgentClient
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api
from tests.integration.test_api_credentials import claude, login

HOURS = timedelta(hours=2)


def agent_of(api: Api, vm_id: str) -> AgentClient:
    """A client for the real agent of ``vm_id``."""
    return AgentClient(api.ctl.vms.live_vm(vm_id).agent_url or "", api.ctl.vms.agent_token(vm_id))


def before_the_write(
    api: Api, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Awaitable[None]]
) -> None:
    """Run ``meanwhile`` once, after a pull-back's agent answered and before it writes."""
    original = api.ctl.credentials.pull_back
    pending = [meanwhile]

    async def pull_back(*args: Any, **kwargs: Any) -> bool:
        while pending:
            await pending.pop()()
        return await original(*args, **kwargs)

    monkeypatch.setattr(api.ctl.credentials, "pull_back", pull_back)


async def pull_back_from(api: Api, vm_id: str) -> None:
    """The pull-back a destroy of ``vm_id`` runs first (and every interval runs over it)."""
    (hook, *_) = api.ctl.vms.before_destroy
    await hook(await api.ctl.store.vms.get(vm_id), api.ctl.vms.agent_token(vm_id))


async def refreshed_in_its_vm(api: Api) -> str:
    """A CLI VM of ann's holding her Claude login, which its CLI has since refreshed (the
    VM's copy expires later than the vault's); the VM's id."""
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "claude_code", vm_id, claude("old", datetime.now(UTC) + HOURS))
    later = claude("refreshed", datetime.now(UTC) + 4 * HOURS)
    await agent_of(api, vm_id).put_credentials("claude_code", later)
    return vm_id


async def test_a_credential_deleted_during_a_pull_back_stays_deleted(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upsert filled the slot the delete had just emptied: the credential came back,
    # recorded as held by a VM the delete had taken it out of.
    api = agent_api
    vm_id = await refreshed_in_its_vm(api)

    async def delete() -> None:
        deleted = await api.client.delete("/api/credentials/ann/claude_code", headers=api.headers())
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["removedFrom"] == [vm_id]

    before_the_write(api, monkeypatch, delete)
    await pull_back_from(api, vm_id)

    assert await api.ctl.store.credentials.get("ann", "claude_code") is None


@pytest.mark.parametrize("delivered", [False, True], ids=["captured", "delivered-to-that-vm"])
async def test_a_fresh_login_during_a_pull_back_is_kept_as_it_is(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch, delivered: bool
) -> None:
    # The VM's refreshed copy of the old login expires later than the fresh login's document,
    # and replaced it: a rotate then undid itself at the next pull-back.
    api = agent_api
    vm_id = await refreshed_in_its_vm(api)
    fresh = claude("fresh", datetime.now(UTC) + 3 * HOURS)

    async def fresh_login() -> None:
        if delivered:
            await login(api, "ann", "claude_code", vm_id, fresh)
        else:
            await api.ctl.credentials.capture("ann", "claude_code", fresh)

    before_the_write(api, monkeypatch, fresh_login)
    await pull_back_from(api, vm_id)

    assert await api.ctl.credentials.document("ann", "claude_code") == fresh
    stored = await api.ctl.store.credentials.get("ann", "claude_code")
    assert stored is not None
    assert stored.source.value == "captured"
    assert stored.delivered_to_vm_id == (vm_id if delivered else None)
    # The next round reads the VM's copy again: the fresh document is still kept.
    await pull_back_from(api, vm_id)
    assert await api.ctl.credentials.document("ann", "claude_code") == fresh
    assert (await agent_of(api, vm_id).credentials_document("claude_code") == fresh) is delivered
