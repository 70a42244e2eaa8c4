"""The pull-back's round over VMs whose agent port answers slowly or never, as a VM's root may
choose: the round pulls from several VMs at once, each within a deadline, so one user's silent
VMs do not hold back another user's pull (each agent call waits up to 10 s: asked one VM after
the other, every silent VM listed first cost the others 10 s per document per round). A real
store and vault; the VMs' sides are stand-ins on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from hearth.credentials import CredentialService, CredentialVault
from hearth.credentials import pullback as pullback_module
from hearth.store import Store, utc_now
from tests.integration.api_fixtures import served
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.test_pullback_faults import (
    LATER,
    MakeDocument,
    delivered,
    pull_rounds,
    vm_answering,
)


def silent_vm(hold: asyncio.Event, asked: list[str]) -> Starlette:
    """A VM's agent port that takes every question and answers none until ``hold`` is set."""

    async def credentials(request: Request) -> Response:
        asked.append(request.url.path)
        await hold.wait()
        return Response("{}", media_type="application/json")

    return Starlette(routes=[Route("/credentials/{provider}", credentials)])


@contextlib.asynccontextmanager
async def round_with(
    store: Store, tmp_path: Path, make_document: MakeDocument, silent: int
) -> AsyncIterator[tuple[CredentialService, bytes, dict[str, object], list[str]]]:
    """``silent`` ready CLI VMs (mallory0's, mallory1's, …) whose agents never answer, listed
    before one of bob's whose agent answers a rotated document at once, each delivered a
    ``gemini_cli`` document; the round running every 50 ms. The service, the delivered
    document, bob's rotated one, and the questions the silent VMs were asked."""
    credentials = CredentialService(store, CredentialVault.load(tmp_path / "state"))
    old = json.dumps(make_document("gemini_cli", marker="old")).encode()
    rotated = make_document("gemini_cli", marker="rotated")
    rotated["expiry_date"] = LATER * 1000
    hold, asked = asyncio.Event(), []
    bobs = vm_answering(
        {"gemini_cli": ("application/json", json.dumps({"document": rotated}).encode())}
    )
    async with contextlib.AsyncExitStack() as stack:
        silent_url = await stack.enter_async_context(served(silent_vm(hold, asked)))  # type: ignore[arg-type]
        bob_url = await stack.enter_async_context(served(bobs))  # type: ignore[arg-type]
        owners = [(f"mallory{i}", silent_url) for i in range(silent)] + [("bob", bob_url)]
        for age, (user, url) in enumerate(owners):
            created = utc_now() - timedelta(minutes=len(owners) - age)  # oldest first
            await delivered(
                store,
                credentials,
                {"gemini_cli": old},
                user=user,
                agent_url=url,
                created_at=created,
            )
        async with pull_rounds(store, credentials):
            try:
                yield credentials, old, rotated, asked
            finally:
                hold.set()  # before the servers wait for their connections


async def pulled_within(
    credentials: CredentialService, old: bytes, seconds: float
) -> dict[str, object]:
    """Bob's vault document once the round has pulled his VM's rotated one (within ``seconds``)."""
    async with asyncio.timeout(seconds):
        while (await credentials.document("bob", "gemini_cli")) == old:
            await asyncio.sleep(0.05)
    kept: dict[str, object] = json.loads(await credentials.document("bob", "gemini_cli"))
    return kept


async def test_a_silent_vm_listed_first_does_not_delay_another_users_pull(
    store: Store, tmp_path: Path, make_document: MakeDocument
) -> None:
    async with round_with(store, tmp_path, make_document, silent=1) as (creds, old, rotated, asked):
        # Well within the 10 s mallory's agent call may wait.
        assert await pulled_within(creds, old, 3.0) == rotated
        assert asked == ["/credentials/gemini_cli"]  # and still held
    assert await creds.document("mallory0", "gemini_cli") == old


async def test_more_silent_vms_than_pulls_at_once_are_each_given_up_at_their_deadline(
    store: Store, tmp_path: Path, make_document: MakeDocument, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pullback_module, "PULLS_AT_ONCE", 2)
    monkeypatch.setattr(pullback_module, "VM_PULL_DEADLINE_S", 0.5)
    with capture_logs() as logs:
        async with round_with(store, tmp_path, make_document, silent=3) as (creds, old, rotated, _):
            # Three silent VMs before bob's, two pulled at a time: bob's within two deadlines.
            assert await pulled_within(creds, old, 5.0) == rotated
    timed_out = [r for r in logs if r["event"] == "pull_back_timed_out"]
    assert len({r["vm_id"] for r in timed_out}) >= 2
    assert all(r["log_level"] == "warning" and r["after_s"] == 0.5 for r in timed_out)
