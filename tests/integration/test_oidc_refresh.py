"""The ``oidc`` refresh with one owner, against the real OAuth server (npm oidc-provider: refresh
tokens that rotate on use, access tokens of a few seconds), in process on SQLite and PostgreSQL
over a CLI VM whose agent is a real process on loopback.

The agent in the VM refreshes the document before it expires; the provider then refuses the old
refresh token; the pull-back brings the refreshed document into the vault. Once the grant is
revoked at the issuer, the agent's next refresh is refused (``invalid_grant``): the vault's
document is marked ``needs_login`` and a signed ``credential.expired`` reaches a webhook.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from hearth.agent_client import AgentClient
from hearth.api.context import Controller
from hearth.config import Settings
from hearth.events.signing import verify
from tests.agent_backend import AgentBackend
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import SHORT_ACCESS_TOKEN_TTL_S, OidcServer
from tests.integration.test_api_credentials import oidc_login
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import Received, WebhookReceiver

# Refresh once less than this is left: about a second after each refresh.
MARGIN_S = SHORT_ACCESS_TOKEN_TTL_S - 1.0
T = TypeVar("T")


async def until(
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    *,
    timeout_s: float = 30.0,
    every_s: float = 0.1,
) -> T:
    """``read()`` again until ``done`` says so (``timeout_s`` at most)."""
    value = await read()
    try:
        async with asyncio.timeout(timeout_s):
            while not done(value):
                await asyncio.sleep(every_s)
                value = await read()
    except TimeoutError:
        pytest.fail(f"{what}: not within {timeout_s:g} s; last seen: {value!r}")
    return value


async def revoke(server: OidcServer, refresh_token: str) -> None:
    """Revoke the grant at the issuer (RFC 7009), as its administrator would."""
    async with httpx.AsyncClient() as client:
        discovery = await client.get(f"{server.issuer}/.well-known/openid-configuration")
        revoked = await client.post(
            discovery.json()["revocation_endpoint"],
            data={
                "token": refresh_token,
                "token_type_hint": "refresh_token",
                "client_id": server.client_id,
            },
        )
    assert revoked.status_code == 200, revoked.text


async def expired_told(
    receiver: WebhookReceiver, reason: str, *, timeout_s: float = 30.0
) -> list[Received]:
    """The ``credential.expired`` events with ``reason`` the receiver got, once there is one."""
    async with asyncio.timeout(timeout_s):
        count = 1
        while True:
            got = await receiver.wait_for("credential.expired", count=count, timeout_s=timeout_s)
            found = [r for r in got if r.event["data"].get("reason") == reason]
            if found:
                return found
            count = len(got) + 1


async def vault_document(ctl: Controller, user: str) -> dict[str, Any]:
    """The user's ``oidc`` document as the vault holds it."""
    document: dict[str, Any] = json.loads(await ctl.credentials.document(user, "oidc"))
    return document


async def test_the_vm_refreshes_the_vault_follows_and_a_refused_refresh_needs_login(
    api_settings: Settings,
    agent_launcher: AgentLauncher,
    tmp_path: Path,
    short_lived_oidc_server: OidcServer,
    agent_client: httpx.Client,
    receiver: WebhookReceiver,
) -> None:
    short_lived = short_lived_oidc_server
    # A real login at the OAuth server through an agent, as in a Browser VM.
    first = await asyncio.to_thread(oidc_login, agent_client, short_lived)
    assert first["client_id"] == short_lived.client_id
    settings = api_settings.with_overrides(
        oidc_issuer=short_lived.issuer,
        oidc_client_id=short_lived.client_id,
        oidc_refresh_margin_s=MARGIN_S,
        pullback_interval_s=0.3,
        # The agents run on the host, which cannot dial a guest's proxy address: straight out.
        cli_egress="off",
        webhook_allow_private=True,
        webhook_backoff_s=0.05,
    )
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        hook = await api.client.post(
            "/api/webhooks",
            json={"url": receiver.url, "events": ["credential.expired"]},
            headers=api.headers(),
        )
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        vm_id = await vm_for(api, "ann")
        await api.ctl.credentials.capture("ann", "oidc", json.dumps(first).encode())
        await api.ctl.delivery.deliver("ann", "oidc", vm_id)
        vm = api.ctl.vms.live_vm(vm_id)
        agent = AgentClient(vm.agent_url or "", api.ctl.vms.agent_token(vm_id))

        # The agent in the VM refreshes before expiry (straight to the issuer: no egress path).
        state = await until(
            agent.refresh_state, lambda s: s["refreshes"] >= 1, "the agent's first refresh"
        )
        assert state["state"] == "refreshed"
        assert state["proxy"] is None
        assert state["margin_s"] == MARGIN_S
        # The pull-back brings the refreshed document into the vault: a later expiry and the
        # rotated refresh token, held by this VM.
        pulled = await until(
            functools.partial(vault_document, api.ctl, "ann"),
            lambda d: d["refresh_token"] != first["refresh_token"],
            "the refreshed document in the vault",
        )
        assert pulled["expires_at"] > first["expires_at"]
        assert pulled["client_id"] == first["client_id"]
        record = await api.ctl.store.credentials.get("ann", "oidc")
        assert record is not None
        assert record.delivered_to_vm_id == vm_id
        assert record.source.value == "pulled_back"
        # The provider refuses the refresh token the VM used up.
        reused = await short_lived.refresh_grant(first["refresh_token"])
        assert reused.status_code == 400, reused.text
        assert reused.json()["error"] == "invalid_grant"

        # The grant revoked at the issuer: the agent's next refresh is refused.
        held = json.loads(await agent.credentials_document("oidc") or b"{}")
        await revoke(short_lived, held["refresh_token"])
        refused = await until(
            agent.refresh_state, lambda s: s["state"] == "refused", "the refused refresh"
        )
        assert refused["error"] == "invalid_grant"
        # Between two of the agent's refreshes (30 s apart at least) its 4 s tokens lapse: the
        # pull-back may tell that too, once per document (reason not_refreshed).
        (told,) = await expired_told(receiver, "refresh_refused")
        assert verify(secret, told.body, told.headers["x-hearth-signature"])
        event = told.event
        assert event["userId"] == "ann"
        assert event["vmId"] == vm_id
        assert event["data"]["provider"] == "oidc"
        assert event["data"]["reason"] == "refresh_refused"
        assert event["data"]["error"] == "invalid_grant"
        facts = await api.client.get("/api/credentials/ann", headers=api.headers())
        (oidc,) = [c for c in facts.json()["credentials"] if c["provider"] == "oidc"]
        assert oidc["needs_login"] is True
        counts = await api.ctl.expiry.check_once()
        assert counts[("oidc", "needs_login")] == 1
        # Told once: further pull-backs of the same refused document tell nothing more.
        await asyncio.sleep(1.0)
        expired = [r.event["data"] for r in await receiver.wait_for("credential.expired")]
        reasons = [data["reason"] for data in expired]
        assert reasons.count("refresh_refused") == 1
        lapsed = [data["expiresAt"] for data in expired if data["reason"] == "not_refreshed"]
        assert len(lapsed) == len(set(lapsed))  # each lapsed document told once
    text = json.dumps([r.event for r in receiver.received])
    for token in (first["refresh_token"], first["access_token"], held["refresh_token"]):
        assert token not in text
