"""Expiry of an ``oidc`` document that the agent of the CLI VM holding it keeps fresh, on SQLite
and PostgreSQL: the vault's copy falls behind the VM's refreshes between two pull-backs, so its
access token's expiry alone tells nothing while that VM exists and its refresh was not refused.
It is told ``credential.expired`` when a pull-back finds even the newest copy expired (reason
``not_refreshed``), when the refresh is refused (``needs_login``, the pull-back's), or, once the
VM is gone, by the vault's copy. A vendor CLI's document (refreshed only when the CLI runs) is
judged by its expiry as before. A real store and vault; a VM's agent is a stand-in on loopback.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.config import Settings
from hearth.credentials import CredentialService, CredentialVault
from hearth.credentials.expiry import ExpiryWatch
from hearth.events.log import EventLog
from hearth.metrics import ControllerMetrics
from hearth.store import Store
from hearth.vm.types import VmState
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.test_credential_expiry import EXPIRES, claude_document
from tests.integration.test_pullback_faults import MakeDocument, delivered, pull_back, vm_answering


def oidc_document(make_document: MakeDocument, marker: str, expires: datetime) -> bytes:
    """An ``oidc`` document for ``marker`` whose access token expires at ``expires``."""
    document = make_document("oidc", marker=marker)
    document["expires_at"] = expires.timestamp()
    return json.dumps(document).encode()


def watch_over(store: Store) -> tuple[ExpiryWatch, EventLog]:
    """The expiry watch with the default settings (24 h window) and the log it tells."""
    settings = Settings()
    events = EventLog(store=store, settings=settings, metrics=ControllerMetrics())
    watch = ExpiryWatch(store=store, events=events, metrics=ControllerMetrics(), settings=settings)
    return watch, events


async def told(events: EventLog) -> list[tuple[str, dict[str, object]]]:
    """The expiry events told, oldest first: their type and data."""
    return [
        (event.type, json.loads(event.data))
        for event in await events.list(user_id="alice")
        if event.type.startswith("credential.expir")
    ]


async def test_a_document_a_vm_refreshes_is_valid_until_the_vm_is_gone(
    store: Store, tmp_path: Path, make_document: MakeDocument
) -> None:
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    documents = {
        "oidc": oidc_document(make_document, "held", EXPIRES),
        "claude_code": claude_document("cli", EXPIRES),  # its CLI refreshes it, when it runs
    }
    record = await delivered(store, credentials, documents)
    watch, events = watch_over(store)

    # Within the window, then past the access token's expiry (the agent refreshed it meanwhile;
    # the next pull-back brings that in): the oidc document stays valid, told nothing.
    counts = await watch.check_once(EXPIRES - timedelta(hours=2))
    assert counts == {("oidc", "valid"): 1, ("claude_code", "expiring"): 1}
    counts = await watch.check_once(EXPIRES + timedelta(minutes=1))
    assert counts == {("oidc", "valid"): 1, ("claude_code", "expired"): 1}
    assert [(kind, data["provider"]) for kind, data in await told(events)] == [
        ("credential.expiring", "claude_code"),
        ("credential.expired", "claude_code"),
    ]

    # The VM is gone: nothing refreshes the vault's copy, which has expired.
    await store.vms.transition(record.id, VmState.READY, VmState.STOPPING)
    await store.vms.transition(record.id, VmState.STOPPING, VmState.DESTROYED)
    for _ in range(2):
        counts = await watch.check_once(EXPIRES + timedelta(minutes=2))
    assert counts == {("oidc", "expired"): 1, ("claude_code", "expired"): 1}
    kind, data = (await told(events))[-1]
    assert (kind, data["provider"]) == ("credential.expired", "oidc")
    assert len(await told(events)) == 3


def agent_holding(document: bytes, refresh: str) -> Starlette:
    """A VM's agent port holding the ``oidc`` ``document``, its refresher in state ``refresh``."""
    state = {"state": refresh, "sha256": hashlib.sha256(document).hexdigest(), "error": None}

    async def refresh_state(request: Request) -> Response:
        return Response(json.dumps(state), media_type="application/json")

    held = ("application/json", json.dumps({"content": document.decode()}).encode())
    routes = vm_answering({"oidc": held}).routes
    return Starlette(routes=[Route("/credentials/oidc/refresh", refresh_state), *routes])


async def test_a_pull_back_that_finds_even_the_vms_copy_expired_tells_it_once(
    store: Store, tmp_path: Path, make_document: MakeDocument
) -> None:
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    lapsed = datetime.fromtimestamp(time.time() - 60, UTC)
    document = oidc_document(make_document, "held", lapsed)
    record = await delivered(store, credentials, {"oidc": document})
    # The agent cannot refresh it (the issuer unreachable): the VM's copy is the vault's.
    agent = agent_holding(document, "failing")
    events = await pull_back(store, credentials, record, agent)
    await pull_back(store, credentials, record, agent)

    [(kind, data)] = await told(events)
    assert kind == "credential.expired"
    assert data == {
        "provider": "oidc",
        "expiresAt": lapsed.isoformat(),
        "reason": "not_refreshed",
    }
    watch, events = watch_over(store)
    assert await watch.check_once() == {("oidc", "expired"): 1}
    assert await told(events) == [(kind, data)]  # told once, by the pull-back


async def test_a_pull_back_that_brings_a_refreshed_copy_tells_nothing(
    store: Store, tmp_path: Path, make_document: MakeDocument
) -> None:
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    lapsed = datetime.fromtimestamp(time.time() - 60, UTC)
    record = await delivered(
        store, credentials, {"oidc": oidc_document(make_document, "held", lapsed)}
    )
    later = datetime.fromtimestamp(time.time() + 3600, UTC)
    refreshed = oidc_document(make_document, "refreshed", later)
    events = await pull_back(store, credentials, record, agent_holding(refreshed, "refreshed"))

    assert await credentials.document("alice", "oidc") == refreshed
    assert await told(events) == []
    watch, events = watch_over(store)
    assert await watch.check_once() == {("oidc", "valid"): 1}
    assert await told(events) == []
