"""Logins survive the controller, in process: a controller that stops (as on SIGTERM, for an
upgrade) leaves each session where it is, and the next one picks it up at its stage, with the
VMs reconciliation adopted (their agents and sealed tokens) — on SQLite and PostgreSQL, with
real agents, the real OAuth server and a scripted user. A session then fails only for a real
reason (its Browser VM died meanwhile). ``kill -9`` of a real ``hearth serve`` while a user signs
in is in tests/e2e/test_auth_failures.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hearth.auth.states import AuthStatus
from hearth.config import Settings
from hearth.store import Store
from hearth.vm.types import VmState
from tests.agent_backend import AgentBackend
from tests.integration.conftest import port_accepts
from tests.integration.login_fixtures import *  # noqa: F403
from tests.integration.login_fixtures import TERMINAL, Login, sign_in
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import *  # noqa: F403


async def awaiting_user_then_stop(
    settings: Settings, backend: AgentBackend, images: Path
) -> tuple[str, dict[str, Any]]:
    """A login started and left ``awaiting_user`` by a controller that then stopped: its id
    and the session as it was."""
    async with Login.running(settings, backend, images) as first:
        session_id = await first.start()
        return session_id, await first.wait_for(session_id, {"awaiting_user"})


@asynccontextmanager
async def store_between(settings: Settings) -> AsyncIterator[Store]:
    """The store, opened while no controller runs (what happened while it was down)."""
    store = await Store.open(settings.database_url)
    try:
        yield store
    finally:
        await store.close()


async def test_a_login_awaiting_the_user_goes_on_after_a_controller_restart(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    images = tmp_path / "image"
    session_id, waiting = await awaiting_user_then_stop(flow_settings, vm_backend, images)
    # The controller is gone; the Browser VM, its agent and the login in it are not.
    browser_id = waiting["browser_vm_id"]
    assert browser_id in vm_backend.running
    assert port_accepts(flow_settings.oidc_callback_port)

    async with Login.running(flow_settings, vm_backend, images) as second:
        still = await second.session(session_id)
        assert still["status"] == "awaiting_user", still
        assert still["browser_vm_id"] == browser_id
        landing = await asyncio.to_thread(sign_in, waiting["login_url"])
        assert "You can close this window" in landing.text
        done = await second.wait_for(session_id, TERMINAL)
        assert (done["status"], done["error_message"]) == ("completed", None)
        stored = await second.credential()
        assert stored["delivered_to"] == done["vm_id"]
        second.assert_browser_vm_gone(done)
        second.assert_only_cli_vm_left(done)


async def test_a_login_whose_cli_vm_was_booting_starts_it_again_after_a_restart(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    images = tmp_path / "image"
    vm_backend.hold = asyncio.Event()  # every boot waits: the session stays cli_vm_starting
    async with Login.running(flow_settings, vm_backend, images) as first:
        session_id = await first.start()
        await first.wait_for(session_id, {"cli_vm_starting"})
        while not vm_backend.running:
            await asyncio.sleep(0.02)
    vm_backend.hold = None
    async with Login.running(flow_settings, vm_backend, images) as second:
        waiting = await second.wait_for(session_id, {"awaiting_user"})
        landing = await asyncio.to_thread(sign_in, waiting["login_url"])
        assert "You can close this window" in landing.text
        done = await second.wait_for(session_id, TERMINAL)
        assert (done["status"], done["error_message"]) == ("completed", None)
        second.assert_only_cli_vm_left(done)


async def test_a_browser_vm_that_died_during_the_restart_fails_the_session_naming_it(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    images = tmp_path / "image"
    session_id, waiting = await awaiting_user_then_stop(flow_settings, vm_backend, images)
    browser_id = waiting["browser_vm_id"]
    vm_backend.kill(browser_id)
    async with Login.running(flow_settings, vm_backend, images) as second:
        ended = await second.wait_for(session_id, TERMINAL)
        assert ended["status"] == "failed"
        assert f"Browser VM {browser_id} of this login is failed" in ended["error_message"]
        second.assert_only_cli_vm_left(ended)


async def test_a_browser_vm_left_running_by_a_login_that_ended_goes_at_the_restart(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    # A cancel writes the session's end, then its flow's cleanup destroys the Browser VM: a
    # controller stopped between the two left a Browser VM no session would ever end, which
    # held the user's one Browser VM and failed every later login of theirs.
    images = tmp_path / "image"
    session_id, waiting = await awaiting_user_then_stop(flow_settings, vm_backend, images)
    browser_id = waiting["browser_vm_id"]
    async with store_between(flow_settings) as store:
        await store.auth_sessions.transition(
            session_id, AuthStatus.AWAITING_USER, AuthStatus.CANCELLED, error_message="cancelled"
        )
    assert browser_id in vm_backend.running
    async with Login.running(flow_settings, vm_backend, images) as second:
        assert (await second.api.ctl.store.vms.get(browser_id)).status is VmState.DESTROYED
        assert browser_id not in vm_backend.running
        # The user's next login gets a Browser VM and completes.
        done = await second.signed_in(await second.start())
        assert (done["status"], done["error_message"]) == ("completed", None)


async def test_a_login_whose_cli_vm_missed_heartbeats_goes_on_after_a_restart(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    # A CLI VM marked unhealthy (its agent missed heartbeats: a host under load, a VM briefly
    # stopped) when the controller went down still runs; a login with no restart between
    # would deliver into it when its agent answers again, and so does one picked up.
    images = tmp_path / "image"
    session_id, waiting = await awaiting_user_then_stop(flow_settings, vm_backend, images)
    cli_id = waiting["vm_id"]
    async with store_between(flow_settings) as store:
        await store.vms.transition(
            cli_id, VmState.READY, VmState.UNHEALTHY, error="missed 3 heartbeats"
        )
    async with Login.running(flow_settings, vm_backend, images) as second:
        done = await second.signed_in(session_id)
        assert (done["status"], done["error_message"]) == ("completed", None)
        assert (await second.credential())["delivered_to"] == cli_id
