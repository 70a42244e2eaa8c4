"""``hearth auth login`` against the controller served on loopback: the real command, the real
auth flow over VMs with real agents, the test OAuth server and a scripted user who signs in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.sdk_fixtures import serving
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.test_auth_flow_fake import flow_settings, sign_in
from tests.integration.test_cli_exec_run import spawn_hearth

__all__ = ["flow_settings"]

DEADLINE_S = 60.0


async def awaiting_user(api: Any, headers: dict[str, str]) -> dict[str, Any]:
    """The user's session once it waits for them to sign in."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        answer = await api.client.get("/api/auth/sessions", headers=headers)
        sessions = answer.json()["sessions"]
        if sessions and sessions[-1]["status"] == "awaiting_user":
            session: dict[str, Any] = sessions[-1]
            return session
        await asyncio.sleep(0.1)
    raise AssertionError(f"no session awaits the user: {sessions}")


async def test_auth_login_prints_the_view_link_and_follows_the_login_to_its_end(
    flow_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    async with serving(flow_settings, AgentBackend(agent_launcher), tmp_path) as live:
        key = live.keys["ann"]
        command = await spawn_hearth(live, "auth", "login", "--provider", "oidc")
        assert command.stdout is not None
        link = (await asyncio.wait_for(command.stdout.readline(), DEADLINE_S)).decode().strip()
        assert link.startswith(f"{live.url}/view/")
        assert "token=" in link
        session = await awaiting_user(live.api, live.api.headers(key))
        await asyncio.to_thread(sign_in, session["login_url"])
        _, err = await asyncio.wait_for(command.communicate(), DEADLINE_S)
        assert command.returncode == 0, err.decode()
        assert "completed" in err.decode()
        assert session["vm_id"] in err.decode()
        # A second login of a provider the user is logged in to starts afresh.
        again = await spawn_hearth(live, "auth", "login", "--provider", "oidc", "--timeout", "1")
        _, late = await asyncio.wait_for(again.communicate(), DEADLINE_S)
        assert again.returncode == 1
        assert "still not done" in late.decode()
