"""Where a user's credentials live, in process on SQLite and PostgreSQL, over VMs whose agents are
real processes on loopback: several providers in one CLI VM, one owner at a time (a document
moved to another VM is pulled back first, the newer kept, and leaves the first VM), deletion from
the vault and every VM, rotation starting a fresh login, and (with the real OAuth server) an
``oidc`` refresh token revoked at the issuer by RFC 7009 when its credential is deleted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.agent_client import AgentClient
from hearth.bench.standins.documents import sample_document
from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer, SignInBrowser

PROVIDERS = ("claude_code", "codex", "gemini_cli")
HOURS = timedelta(hours=2)


async def login(api: Api, user: str, provider: str, vm_id: str, document: bytes) -> None:
    """What a completed login leaves: the document captured, then delivered into ``vm_id``."""
    await api.ctl.credentials.capture(user, provider, document)
    await api.ctl.delivery.deliver(user, provider, vm_id)


def held(listing: dict[str, Any]) -> dict[str, bool]:
    return {entry["provider"]: entry["present"] for entry in listing["credentials"]}


async def in_vm(api: Api, vm_id: str) -> dict[str, Any]:
    answer = await api.client.get(f"/api/vms/{vm_id}/credentials", headers=api.headers())
    assert answer.status_code == 200, answer.text
    listing: dict[str, Any] = answer.json()
    return listing


def claude(marker: str, expires: datetime) -> bytes:
    document: dict[str, Any] = sample_document("claude_code", marker)
    document["claudeAiOauth"]["expiresAt"] = int(expires.timestamp() * 1000)
    return json.dumps(document).encode()


async def test_three_providers_live_in_one_vm_and_a_move_leaves_one_owner(
    agent_api: Api,
) -> None:
    api = agent_api
    first = await vm_for(api, "ann")
    soon = datetime.now(UTC) + timedelta(hours=1)
    await login(api, "ann", "claude_code", first, claude("ann", soon))
    for provider in ("codex", "gemini_cli"):
        document = json.dumps(sample_document(provider, "ann")).encode()
        await login(api, "ann", provider, first, document)
    listing = await in_vm(api, first)
    assert held(listing) == {"claude_code": True, "codex": True, "gemini_cli": True, "oidc": False}
    assert all(e["inVault"] for e in listing["credentials"] if e["present"])
    network = (await api.client.get(f"/api/vms/{first}/network", headers=api.headers())).json()
    assert sorted(network["providers"]) == sorted(PROVIDERS)
    # The CLI in the first VM refreshed Claude's token; the document then moves to a second VM:
    # the refreshed one comes back first and is the one delivered, and the first VM lets go.
    expires = datetime.now(UTC) + timedelta(hours=8)
    refreshed = claude("refreshed", expires)
    owner = AgentClient(api.ctl.vms.live_vm(first).agent_url or "", api.ctl.vms.agent_token(first))
    await owner.put_credentials("claude_code", refreshed)
    second = await vm_for(api, "ann")
    await api.ctl.delivery.deliver("ann", "claude_code", second)
    assert held(await in_vm(api, first))["claude_code"] is False
    moved = await in_vm(api, second)
    assert held(moved)["claude_code"] is True
    stored = await api.ctl.store.credentials.get("ann", "claude_code")
    assert stored is not None
    assert stored.expires_at == expires.replace(microsecond=expires.microsecond // 1000 * 1000)
    assert stored.delivered_to_vm_id == second
    assert b"refreshed" in await api.ctl.credentials.document("ann", "claude_code")
    network = (await api.client.get(f"/api/vms/{first}/network", headers=api.headers())).json()
    assert sorted(network["providers"]) == ["codex", "gemini_cli"]
    assert held(await in_vm(api, first))["codex"] is True


async def sleeping_owner_and_another(api: Api, action: str) -> tuple[str, str]:
    """A CLI VM of ann's holding her Claude login, then paused or hibernated (``action``),
    and a second CLI VM of hers."""
    first = await vm_for(api, "ann")
    await login(api, "ann", "claude_code", first, claude("ann", datetime.now(UTC) + HOURS))
    slept = await api.client.post(f"/api/vms/{first}/{action}", headers=api.headers())
    assert slept.status_code == 200, slept.text
    return first, await vm_for(api, "ann")


@pytest.mark.parametrize(("action", "status"), [("pause", "paused"), ("hibernate", "hibernated")])
async def test_a_move_takes_the_copy_of_a_sleeping_owner_and_lets_it_sleep_on(
    agent_api: Api, action: str, status: str
) -> None:
    # Only running VMs were asked: a paused or hibernated owner kept its copy, and came back
    # with a second one (a rotated refresh token then logs one of the two CLIs out).
    api = agent_api
    first, second = await sleeping_owner_and_another(api, action)
    # A new login (its capture forgets where the earlier document went) lands in the second.
    await login(api, "ann", "claude_code", second, claude("new", datetime.now(UTC) + HOURS))
    assert (await api.ctl.store.vms.get(first)).status.value == status
    assert held(await in_vm(api, second))["claude_code"] is True
    assert held(await in_vm(api, first))["claude_code"] is False  # the call wakes it


async def test_a_move_lands_when_the_sleeping_owner_has_no_room_to_wake(
    agent_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = agent_api
    first, second = await sleeping_owner_and_another(api, "hibernate")

    # The host is full: the memory in use now is all there is.
    used = await api.ctl.store.vms.sum_active_mem_mib()
    full = dataclasses.replace(api.ctl.vms.quotas, memory_limit_mib=used)
    monkeypatch.setattr(api.ctl.vms, "quotas", full)
    # A new login (its capture forgets where the earlier document went) lands in the second.
    await login(api, "ann", "claude_code", second, claude("new", datetime.now(UTC) + HOURS))
    assert (await api.ctl.store.vms.get(first)).status.value == "hibernated"
    assert held(await in_vm(api, second))["claude_code"] is True


async def test_a_pulled_back_document_keeps_the_vms_bytes_and_so_reads_as_the_vaults(
    agent_api: Api,
) -> None:
    # The CLI refreshed its tokens and wrote the file in its own layout: the vault keeps those
    # very bytes, so the VM's file and the vault's copy have one sha256.
    api = agent_api
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "claude_code", vm_id, claude("ann", datetime.now(UTC)))
    refreshed = claude("refreshed", datetime.now(UTC) + timedelta(hours=8))
    owner = AgentClient(api.ctl.vms.live_vm(vm_id).agent_url or "", api.ctl.vms.agent_token(vm_id))
    await owner.put_credentials("claude_code", refreshed)
    pull_back = api.ctl.vms.before_destroy[0]

    await pull_back(await api.ctl.store.vms.get(vm_id), api.ctl.vms.agent_token(vm_id))

    assert await api.ctl.credentials.document("ann", "claude_code") == refreshed
    (entry,) = [e for e in (await in_vm(api, vm_id))["credentials"] if e["present"]]
    assert entry["inVault"] is True


async def test_a_deleted_credential_leaves_the_vault_and_every_vm(agent_api: Api) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "codex", vm_id, json.dumps(sample_document("codex", "a")).encode())
    bob = api.headers(await api.user_key("bob"))
    assert_error(
        await api.client.delete("/api/credentials/ann/codex", headers=bob), 403, "forbidden"
    )
    deleted = await api.client.delete("/api/credentials/ann/codex", headers=api.headers())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "userId": "ann",
        "provider": "codex",
        "removedFrom": [vm_id],
        "revocation": None,
    }
    assert await api.ctl.store.credentials.get("ann", "codex") is None
    assert held(await in_vm(api, vm_id))["codex"] is False
    again = await api.client.delete("/api/credentials/ann/codex", headers=api.headers())
    assert_error(again, 404, "not_found")
    unknown = await api.client.delete("/api/credentials/ann/slack", headers=api.headers())
    assert_error(unknown, 422, "invalid_input")


async def test_a_deleted_credential_leaves_paused_and_hibernated_vms_which_sleep_on(
    agent_api: Api,
) -> None:
    # The default idle action pauses a VM: a deletion that skipped it would leave the CLI
    # there logged in, its provider's API open, once the VM is resumed.
    api = agent_api
    paused, hibernated = await vm_for(api, "ann"), await vm_for(api, "ann")
    document = json.dumps(sample_document("codex", "a")).encode()
    await login(api, "ann", "codex", paused, document)
    # The second holds a copy too (as a VM asleep through an earlier move would).
    other = AgentClient(
        api.ctl.vms.live_vm(hibernated).agent_url or "", api.ctl.vms.agent_token(hibernated)
    )
    await other.put_credentials("codex", document)
    admin = api.headers()
    assert (await api.client.post(f"/api/vms/{paused}/pause", headers=admin)).status_code == 200
    asleep = await api.client.post(f"/api/vms/{hibernated}/hibernate", headers=admin)
    assert asleep.status_code == 200, asleep.text

    deleted = await api.client.delete("/api/credentials/ann/codex", headers=admin)

    assert deleted.status_code == 200, deleted.text
    assert sorted(deleted.json()["removedFrom"]) == sorted([paused, hibernated])
    for vm_id, status in ((paused, "paused"), (hibernated, "hibernated")):
        assert (await api.client.get(f"/api/vms/{vm_id}", headers=admin)).json()["status"] == status
        resumed = await api.client.post(f"/api/vms/{vm_id}/resume", headers=admin)
        assert resumed.status_code == 200, resumed.text
        assert held(await in_vm(api, vm_id))["codex"] is False
    network = (await api.client.get(f"/api/vms/{paused}/network", headers=admin)).json()
    assert "codex" not in network["providers"]


async def test_a_hibernated_vm_with_no_room_to_wake_keeps_the_credential_and_says_so(
    agent_api: Api,
) -> None:
    # Its document cannot be removed now: the delete is refused, naming it, and the vault's
    # copy stays, so a later delete (or the VM's destroy) can still take it out.
    api = agent_api
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "codex", vm_id, json.dumps(sample_document("codex", "a")).encode())
    admin = api.headers()
    asleep = await api.client.post(f"/api/vms/{vm_id}/hibernate", headers=admin)
    assert asleep.status_code == 200, asleep.text
    roomy = api.ctl.vms.quotas
    api.ctl.vms.quotas = dataclasses.replace(roomy, memory_limit_mib=0)

    refused = await api.client.delete("/api/credentials/ann/codex", headers=admin)

    assert vm_id in assert_error(refused, 409, "conflict")["message"]
    assert await api.ctl.store.credentials.get("ann", "codex") is not None
    api.ctl.vms.quotas = roomy
    deleted = await api.client.delete("/api/credentials/ann/codex", headers=admin)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removedFrom"] == [vm_id]


async def test_a_vm_whose_agent_cannot_say_what_it_holds_keeps_the_credential_and_says_so(
    agent_api: Api,
) -> None:
    # The VM still reads ready, but its agent does not answer: it may hold the document, so
    # the delete is refused, naming it, and the vault's copy stays for a retry.
    api = agent_api
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "codex", vm_id, json.dumps(sample_document("codex", "a")).encode())
    backend = api.backend
    assert isinstance(backend, AgentBackend)
    backend.agent(vm_id).kill()

    refused = await api.client.delete("/api/credentials/ann/codex", headers=api.headers())

    message = assert_error(refused, 409, "conflict")["message"]
    assert f"the agent of VM {vm_id} did not answer" in message
    assert await api.ctl.store.credentials.get("ann", "codex") is not None


async def test_rotation_starts_a_fresh_login_for_a_provider_the_user_has(agent_api: Api) -> None:
    api = agent_api
    never = await api.client.post("/api/credentials/ann/codex/rotate", headers=api.headers())
    assert "no codex credentials" in assert_error(never, 404, "not_found")["message"]
    await api.client.post("/api/keys", json={"userId": "ann"}, headers=api.headers())
    await api.ctl.credentials.capture("ann", "codex", json.dumps(sample_document("codex")).encode())
    rotated = await api.client.post("/api/credentials/ann/codex/rotate", headers=api.headers())
    assert rotated.status_code == 202, rotated.text
    session_id = rotated.json()["sessionId"]
    assert rotated.json()["viewUrl"]
    session = await api.ctl.auth.get(session_id, user_id="ann")
    assert session.provider == "codex"
    await api.ctl.auth.cancel(session_id, user_id=None)


def oidc_login(agent: httpx.Client, server: OidcServer) -> dict[str, Any]:
    """The document of a login at ``server`` that the agent ran and a scripted user completed."""
    body = {"provider": "oidc", "issuer": server.issuer, "client_id": server.client_id}
    started = agent.post("/login/start", json=body).json()
    with SignInBrowser() as user:
        user.consent(user.sign_in(started["authorize_url"]))
    document: dict[str, Any] = agent.get(f"/login/{started['login_id']}?content=true").json()[
        "document"
    ]
    return document


@pytest.fixture
async def issuer_api(
    api_settings: Settings, oidc_server: OidcServer, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller with the test OAuth server as its OIDC issuer, VMs' agents real."""
    settings = api_settings.with_overrides(
        oidc_issuer=oidc_server.issuer, oidc_client_id=oidc_server.client_id
    )
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


@pytest.fixture
async def signed_in(agent_client: httpx.Client, oidc_server: OidcServer) -> dict[str, Any]:
    """The document of a real login at the OAuth server, through an agent, as in a Browser VM."""
    return await asyncio.to_thread(oidc_login, agent_client, oidc_server)


async def test_deleting_an_oidc_credential_revokes_its_refresh_token_at_the_issuer(
    issuer_api: Api, signed_in: dict[str, Any], oidc_server: OidcServer
) -> None:
    api, document = issuer_api, signed_in
    await api.client.post("/api/keys", json={"userId": "ann"}, headers=api.headers())
    await api.ctl.credentials.capture("ann", "oidc", json.dumps(document).encode())
    deleted = await api.client.delete("/api/credentials/ann/oidc", headers=api.headers())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["revocation"] == "revoked"
    refused = await oidc_server.refresh_grant(document["refresh_token"])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"


async def test_deleting_an_oidc_credential_revokes_the_token_the_vm_refreshed_to(
    issuer_api: Api, signed_in: dict[str, Any], oidc_server: OidcServer
) -> None:
    # The VM's agent refreshes the document itself and the vault learns of it only at the next
    # pull-back: what the VM holds is the live grant, and it is what must be revoked.
    api, document = issuer_api, signed_in
    answer = await oidc_server.refresh_grant(document["refresh_token"])
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["refresh_token"] != document["refresh_token"]  # rotated
    refreshed = {**document, "access_token": tokens["access_token"],
                 "refresh_token": tokens["refresh_token"]}  # fmt: skip
    vm_id = await vm_for(api, "ann")
    await login(api, "ann", "oidc", vm_id, json.dumps(document).encode())
    agent = AgentClient(api.ctl.vms.live_vm(vm_id).agent_url or "", api.ctl.vms.agent_token(vm_id))
    await agent.put_credentials("oidc", json.dumps(refreshed).encode())  # as its refresh

    deleted = await api.client.delete("/api/credentials/ann/oidc", headers=api.headers())

    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removedFrom"] == [vm_id]
    assert deleted.json()["revocation"] == "revoked"
    refused = await oidc_server.refresh_grant(tokens["refresh_token"])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"
