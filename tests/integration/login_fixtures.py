"""The auth flow in process, shared by its tests: settings for logins against the test OAuth
server, VMs with real agents (``AgentBackend``), a user's view of the auth API (``Login``) and a
scripted sign-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from hearth.control.quotas import Quotas
from hearth.vm.host import free_local_port
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import OidcServer, SignInBrowser

__all__ = [
    "PROVIDER",
    "TERMINAL",
    "USER",
    "WAIT_DEADLINE_S",
    "Login",
    "callback_port",
    "flow_settings",
    "login",
    "sign_in",
    "vm_backend",
]

USER = "ada"
PROVIDER = "oidc"
# Generous against a busy machine; every wait below ends as soon as its condition holds.
WAIT_DEADLINE_S = 20.0
TERMINAL = {"completed", "failed", "timeout", "cancelled"}


@pytest.fixture
def flow_settings(database_url: str, tmp_path: Path, oidc_server: OidcServer) -> Settings:
    """Settings for logins against the test OAuth server, no egress proxy, short deadlines."""
    return Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_OIDC_ISSUER": oidc_server.issuer,
            "HEARTH_OIDC_CLIENT_ID": oidc_server.client_id,
            "HEARTH_OIDC_CALLBACK_PORT": str(free_local_port()),
            "HEARTH_LOGIN_EGRESS": "off",
            "HEARTH_LOGIN_TIMEOUT_S": "15",
        }
    ).with_overrides(cli_vm_timeout_s=10.0, browser_vm_timeout_s=10.0)


@pytest.fixture
def vm_backend(agent_launcher: AgentLauncher) -> AgentBackend:
    """Fake VMs with real agents; the launcher's teardown proves no agent is left running."""
    return AgentBackend(agent_launcher)


class Login:
    """One user's view of the auth API: start, watch, cancel; and the VMs behind a session."""

    def __init__(self, api: Api, backend: AgentBackend, key: str) -> None:
        self.api = api
        self.backend = backend
        self.headers = api.headers(key)
        self.view_urls: dict[str, str] = {}  # each started session's view link

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        settings: Settings,
        backend: AgentBackend,
        images_root: Path,
        *,
        quotas: Quotas = DEFAULT_QUOTAS,
    ) -> AsyncIterator[Login]:
        """The controller in process over ``backend`` within ``quotas``, and a key for USER."""
        async with running_api(settings, backend, images_root, quotas=quotas) as api:
            yield cls(api, backend, await api.user_key(USER))

    async def start(self) -> str:
        """``POST /api/auth/start`` for PROVIDER; the session id."""
        response = await self.api.client.post(
            "/api/auth/start", json={"provider": PROVIDER}, headers=self.headers
        )
        assert response.status_code == 202, response.text
        session_id = response.json()["sessionId"]
        assert isinstance(session_id, str)
        self.view_urls[session_id] = response.json()["viewUrl"]
        return session_id

    async def session(self, session_id: str) -> dict[str, Any]:
        """``GET /api/auth/session/{id}``."""
        response = await self.api.client.get(
            f"/api/auth/session/{session_id}", headers=self.headers
        )
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()["session"]
        return session

    async def wait_for(self, session_id: str, statuses: set[str]) -> dict[str, Any]:
        """The session once its status is one of ``statuses``; fails if it ends elsewhere."""
        deadline = time.monotonic() + WAIT_DEADLINE_S
        while True:
            session = await self.session(session_id)
            if session["status"] in statuses:
                return session
            if session["status"] in TERMINAL or time.monotonic() > deadline:
                pytest.fail(f"session did not reach {sorted(statuses)}: {session}")
            await asyncio.sleep(0.05)

    async def signed_in(self, session_id: str) -> dict[str, Any]:
        """The session once it ended, its user signed in as soon as it awaited them."""
        waiting = await self.wait_for(session_id, {"awaiting_user"})
        landing = await asyncio.to_thread(sign_in, waiting["login_url"])
        assert "You can close this window" in landing.text
        return await self.wait_for(session_id, TERMINAL)

    async def cancel(self, session_id: str) -> dict[str, Any]:
        """``POST /api/auth/session/{id}/cancel``; the session it returns."""
        response = await self.api.client.post(
            f"/api/auth/session/{session_id}/cancel", headers=self.headers
        )
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()["session"]
        return session

    async def credential(self) -> dict[str, Any]:
        """What ``GET /api/credentials/{user}`` says of PROVIDER."""
        response = await self.api.client.get(f"/api/credentials/{USER}", headers=self.headers)
        assert response.status_code == 200, response.text
        (entry,) = [c for c in response.json()["credentials"] if c["provider"] == PROVIDER]
        assert isinstance(entry, dict)
        return entry

    async def until_browser_vm_gone(self, session: dict[str, Any]) -> None:
        """``assert_browser_vm_gone`` once the flow has cleaned up: a session another party
        ended (not this controller's cancel, which returns after the cleanup) reads as ended
        while its flow is still destroying the Browser VM."""
        deadline = time.monotonic() + WAIT_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                self.assert_browser_vm_gone(session)
                return
            except AssertionError:
                await asyncio.sleep(0.05)
        self.assert_browser_vm_gone(session)

    def assert_browser_vm_gone(self, session: dict[str, Any]) -> None:
        """The session's Browser VM was destroyed and its agent process reaped."""
        browser_id = session["browser_vm_id"]
        assert browser_id is not None, session
        assert browser_id not in self.backend.running
        assert browser_id in self.backend.destroyed
        assert self.backend.agent(browser_id).process.poll() is not None
        assert browser_id not in self.backend.running_agents()

    def assert_only_cli_vm_left(self, session: dict[str, Any]) -> None:
        """Nothing runs but the user's CLI VM and its agent (the flow keeps that one)."""
        cli_id = session["vm_id"]
        assert cli_id is not None, session
        assert set(self.backend.running) == {cli_id}
        assert self.backend.running_agents() == {cli_id}


def sign_in(authorize_url: str) -> httpx.Response:
    """The user signs in at ``authorize_url`` and consents; the agent's callback page."""
    with SignInBrowser() as browser:
        return browser.consent(browser.sign_in(authorize_url))


@pytest.fixture
async def login(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> AsyncIterator[Login]:
    """The controller with the default (roomy) deadlines."""
    async with Login.running(flow_settings, vm_backend, tmp_path / "image") as running:
        yield running


@pytest.fixture
def callback_port(flow_settings: Settings) -> int:
    """The port the Browser VM's agent takes the OAuth redirect on."""
    return flow_settings.oidc_callback_port
