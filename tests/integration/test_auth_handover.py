"""The handover, a login's last stage, in process: the real controller, store and OAuth server,
fake VMs with real agents (as in ``test_auth_flow_fake``). The CLI VM holds the login's document
when, and only when, the session completes: a cancel during the delivery lets it finish, then
takes it out again; a delivery that misses its deadline ends the session ``timeout`` and is taken
out too.

The delivery is held where a cut hurt most: the agent has written the document into the CLI VM
and the vault is recording it (a slow store). The hold calls through to the real vault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hearth.auth.states import AuthStatus
from hearth.config import Settings
from hearth.credentials.service import CredentialService
from tests.agent_backend import AgentBackend
from tests.integration.login_fixtures import *  # noqa: F403
from tests.integration.login_fixtures import PROVIDER, TERMINAL, WAIT_DEADLINE_S, Login, sign_in
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import *  # noqa: F403


class HeldRecording:
    """The vault's ``mark_delivered`` held until ``release`` (the document is in the VM by
    then); ``reached`` is set when the delivery gets there."""

    def __init__(self, credentials: CredentialService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        real: Callable[..., Awaitable[Any]] = credentials.mark_delivered

        async def held(*args: Any, **kwargs: Any) -> Any:
            self.reached.set()
            await self.release.wait()
            return await real(*args, **kwargs)

        monkeypatch.setattr(credentials, "mark_delivered", held)


def holds_document(login: Login, vm_id: str) -> bool:
    """Whether the CLI VM's agent holds a PROVIDER document (asked directly)."""
    agent = login.backend.agent(vm_id)
    with agent.client(agent.token) as client:
        facts = client.get(f"/credentials/{PROVIDER}")
    assert facts.status_code in (200, 404), facts.text
    return facts.status_code == 200 and facts.json().get("present") is True


async def delivering(login: Login, held: HeldRecording) -> dict[str, Any]:
    """A login signed in, its delivery held with the document in the CLI VM; the session."""
    session_id = await login.start()
    waiting = await login.wait_for(session_id, {"awaiting_user"})
    await asyncio.to_thread(sign_in, waiting["login_url"])
    async with asyncio.timeout(WAIT_DEADLINE_S):
        await held.reached.wait()
    session = await login.session(session_id)
    assert session["status"] == "delivering", session
    assert holds_document(login, session["vm_id"])
    return session


async def test_a_cancel_during_the_delivery_lets_it_finish_then_takes_the_document_out(
    login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel wrote `cancelled`, then cut the flow's task mid-delivery: the document stayed
    # in the CLI VM of a session that read cancelled.
    held = HeldRecording(login.api.ctl.credentials, monkeypatch)
    session = await delivering(login, held)
    cancelling = asyncio.create_task(login.cancel(session["session_id"]))

    async def cancel_written() -> None:
        while (await login.session(session["session_id"]))["status"] != "cancelled":
            await asyncio.sleep(0.05)

    async with asyncio.timeout(WAIT_DEADLINE_S):
        await cancel_written()
    await asyncio.sleep(0.2)  # the cancel reaches the flow while the delivery is held
    held.release.set()
    cancelled = await asyncio.wait_for(cancelling, WAIT_DEADLINE_S)

    assert (cancelled["status"], cancelled["error_message"]) == (
        "cancelled",
        "cancelled by request",
    )
    assert not holds_document(login, session["vm_id"])
    stored = await login.credential()  # the vault no longer names the VM it was taken out of
    assert (stored["present"], stored["delivered_to"]) == (True, None)
    login.assert_browser_vm_gone(cancelled)
    login.assert_only_cli_vm_left(cancelled)


async def test_a_delivery_past_its_deadline_times_the_session_out_and_takes_the_document_out(
    flow_settings: Settings,
    vm_backend: AgentBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The delivery had no deadline: a store or agent that never answered held the session
    # `delivering` for good.
    settings = flow_settings.with_overrides(delivery_timeout_s=1.0)
    async with Login.running(settings, vm_backend, tmp_path / "image") as login:
        held = HeldRecording(login.api.ctl.credentials, monkeypatch)  # never released
        session = await delivering(login, held)

        ended = await login.wait_for(session["session_id"], TERMINAL)

        assert (ended["status"], ended["error_message"]) == (
            "timeout",
            "timed out after 1 s delivering the credentials",
        )
        assert not holds_document(login, session["vm_id"])
        stored = await login.credential()
        assert (stored["present"], stored["delivered_to"]) == (True, None)
        login.assert_browser_vm_gone(ended)
        assert (await login.api.ctl.store.auth_sessions.get(ended["session_id"])).status is (
            AuthStatus.TIMEOUT
        )


def test_the_delivery_deadline_defaults_to_300_s_and_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).delivery_timeout_s == 300.0
    assert Settings.from_env({"HEARTH_DELIVERY_TIMEOUT_S": "42"}).delivery_timeout_s == 42.0
