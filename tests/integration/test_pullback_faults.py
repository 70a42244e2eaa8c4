"""The credential pull-back takes what a CLI VM answers as untrusted: the VM's root may change
any file or put something else on the agent's port. An answer that cannot be taken (a
document breaking its provider's rules, a body that is not JSON) is logged, and the VM's other
documents are still pulled back; one VM's answer, whatever it is, does not stop the round on
the interval for the VMs after it (another user's). A real store and vault; the VM's side is a
stand-in on loopback answering as such a VM would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.config import Settings
from hearth.credentials import CredentialService, CredentialVault
from hearth.credentials.pullback import PullBack
from hearth.events.log import EventLog
from hearth.metrics import ControllerMetrics
from hearth.store import Store, VmRecord, utc_now
from hearth.vm.types import VmState
from tests.integration.api_fixtures import served
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import new_vm

MakeDocument = Callable[..., dict[str, object]]
LATER = 1_960_000_000


def vm_answering(answers: dict[str, tuple[str, bytes]]) -> Starlette:
    """A VM's agent port answering ``GET /credentials/{provider}`` with ``answers[provider]``
    (content type, body), always 200."""

    async def credentials(request: Request) -> Response:
        content_type, body = answers[request.path_params["provider"]]
        return Response(body, status_code=200, media_type=content_type)

    return Starlette(routes=[Route("/credentials/{provider}", credentials)])


async def delivered(
    store: Store,
    credentials: CredentialService,
    documents: dict[str, bytes],
    *,
    user: str = "alice",
    **row: Any,
) -> VmRecord:
    """A ready CLI VM of ``user``'s (``row``: more of its fields) to which ``documents`` (by
    provider) were delivered."""
    await store.users.ensure(user)
    record = await store.vms.insert(new_vm(user, status=VmState.READY, **row))
    for provider, document in documents.items():
        await credentials.capture(user, provider, document)
        sha256 = hashlib.sha256(document).hexdigest()
        await credentials.mark_delivered(user, provider, record.id, sha256=sha256)
    return record


async def pull_back(
    store: Store, credentials: CredentialService, record: VmRecord, agent: Starlette
) -> EventLog:
    """Pull back from ``record`` with ``agent`` answering on its port; the events told."""
    events = EventLog(store=store, settings=Settings(), metrics=ControllerMetrics())
    async with served(agent) as url:  # type: ignore[arg-type]
        record = await store.vms.update(record.id, agent_url=url)
        await PullBack(store, credentials, events).before_destroy(record, "token")
    return events


@pytest.mark.parametrize(
    "codex_answer",
    [
        ("application/json", json.dumps({"document": {"tokens": None}}).encode()),
        ("text/html", b"<html>not an agent</html>"),
    ],
    ids=["breaks-the-rules", "not-json"],
)
async def test_one_answer_that_cannot_be_taken_does_not_stop_the_others(
    store: Store,
    tmp_path: Path,
    make_document: MakeDocument,
    codex_answer: tuple[str, bytes],
) -> None:
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    old = {p: json.dumps(make_document(p, marker="old")).encode() for p in ("codex", "gemini_cli")}
    record = await delivered(store, credentials, old)
    rotated = make_document("gemini_cli", marker="rotated")
    rotated["expiry_date"] = LATER * 1000
    answers = {
        "codex": codex_answer,
        "gemini_cli": ("application/json", json.dumps({"document": rotated}).encode()),
    }
    await pull_back(store, credentials, record, vm_answering(answers))

    kept = json.loads(await credentials.document("alice", "gemini_cli"))
    assert kept == rotated
    assert json.loads(await credentials.document("alice", "codex")) == make_document(
        "codex", marker="old"
    )


@pytest.mark.parametrize(
    ("told", "expected"),
    [({}, None), ({"error": "invalid_grant " * 1000}, ("invalid_grant " * 1000)[:300])],
    ids=["no-error", "a-long-error"],
)
async def test_a_refused_refresh_tells_the_vms_error_capped_or_none(
    store: Store,
    tmp_path: Path,
    make_document: MakeDocument,
    told: dict[str, object],
    expected: str | None,
) -> None:
    # The VM's error went into the event as it came: "None" when absent, any length.
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    document = json.dumps(make_document("oidc", marker="held")).encode()
    record = await delivered(store, credentials, {"oidc": document})
    refused = {"state": "refused", "sha256": hashlib.sha256(document).hexdigest(), **told}

    async def refresh_state(request: Request) -> Response:
        return Response(json.dumps(refused), media_type="application/json")

    held = ("application/json", json.dumps({"content": document.decode()}).encode())
    routes = vm_answering({"oidc": held}).routes
    agent = Starlette(routes=[Route("/credentials/oidc/refresh", refresh_state), *routes])
    events = await pull_back(store, credentials, record, agent)

    (event,) = [e for e in await events.list(user_id="alice") if e.type == "credential.expired"]
    data = json.loads(event.data)
    assert data["reason"] == "refresh_refused"
    assert data.get("error") == expected


class StandInVms:
    """What the pull-back's round uses of a ``VmService``: the VMs (oldest first), their tokens."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def list_vms(self) -> list[VmRecord]:
        return await self.store.vms.list()

    def agent_token(self, vm_id: str) -> str:
        return "token"


@contextlib.asynccontextmanager
async def pull_rounds(store: Store, credentials: CredentialService) -> AsyncIterator[None]:
    """Pull-back rounds every 0.05 s over the store's ready VMs while the block runs."""
    pulling = PullBack(store, credentials, None)  # type: ignore[arg-type]  # tells nothing here
    rounds = asyncio.create_task(pulling.run(StandInVms(store), 0.05))  # type: ignore[arg-type]
    try:
        yield
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)


async def test_one_vms_answer_does_not_stop_the_round_for_the_vms_after_it(
    store: Store, tmp_path: Path, make_document: MakeDocument
) -> None:
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    old = json.dumps(make_document("gemini_cli", marker="old")).encode()
    rotated = make_document("gemini_cli", marker="rotated")
    rotated["expiry_date"] = LATER * 1000
    answers = {  # mallory's: JSON's escape of a lone surrogate, text that has no UTF-8
        "mallory": ("application/json", b'{"content": "\\ud800"}'),
        "bob": ("application/json", json.dumps({"document": rotated}).encode()),
    }
    async with contextlib.AsyncExitStack() as stack:
        # Listed oldest first: mallory's VM is asked before bob's in every round.
        for age, user in enumerate(("bob", "mallory")):
            url = await stack.enter_async_context(
                served(vm_answering({"gemini_cli": answers[user]}))  # type: ignore[arg-type]
            )
            created = utc_now() - timedelta(minutes=age)
            await delivered(
                store,
                credentials,
                {"gemini_cli": old},
                user=user,
                agent_url=url,
                created_at=created,
            )
        async with pull_rounds(store, credentials), asyncio.timeout(10):
            while (await credentials.document("bob", "gemini_cli")) == old:
                await asyncio.sleep(0.05)
    assert json.loads(await credentials.document("bob", "gemini_cli")) == rotated
    assert await credentials.document("mallory", "gemini_cli") == old
