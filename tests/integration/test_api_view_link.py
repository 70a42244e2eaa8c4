"""The login's view link and noVNC's files: the headers that keep them out of other sites'
frames, keep the token out of Referers and out of caches; the link's answer without noVNC; and
how the view's WebSocket refuses a viewer whose token is wrong or whose login has ended; and how
the view dies with the API key whose request started its login.

The API is served in process over the fake backend, as in ``test_api_view``; noVNC is a stand-in
directory (what is tested is the controller's answer, not noVNC: ``test_view_browser`` opens the
real one in Chromium).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from hearth.api.app import create_app
from hearth.api.routes import view
from hearth.auth.states import AuthStatus
from hearth.config import Settings
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.test_api_view import reads_of_logins, refused, relayed, until, viewed


@pytest.fixture
async def novnc_api(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Api]:
    """The controller in process with noVNC's page and a script of it installed."""
    novnc = tmp_path / "novnc"
    (novnc / "app").mkdir(parents=True)
    (novnc / "vnc.html").write_text('<script type="module" src="app/ui.js"></script>')
    (novnc / "app" / "ui.js").write_text("export default {};")
    monkeypatch.setattr(view, "NOVNC_DIR", novnc)
    async with running_api(api_settings, fake_backend, tmp_path / "image") as running:
        yield running


def assert_protected(answer: httpx.Response) -> None:
    """No other site may frame it, no Referer carries its URL on, no cache keeps it."""
    assert answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"


# --- the link and noVNC's files ---------------------------------------------------------------


async def test_the_view_link_and_novncs_files_may_not_be_framed_and_leak_no_token(
    novnc_api: Api,
) -> None:
    # The page where the user types their provider password could be framed by any site
    # (clickjacking), and the token in its URL could leave in a Referer.
    async with viewed(novnc_api, AuthStatus.AWAITING_USER) as view_of:
        client = novnc_api.client
        link = await client.get(f"/view/{view_of.session.id}?token={view_of.token}")
        assert link.status_code == 302
        page = await client.get(link.headers["location"])
        script = await client.get("/novnc/app/ui.js")
        missing = await client.get("/novnc/app/missing.js")

        assert (page.status_code, script.status_code, missing.status_code) == (200, 200, 404)
        for answer in (link, page, script, missing):
            assert_protected(answer)
        # noVNC's page may still load its own scripts and open its WebSocket to this host.
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy


def test_the_view_link_is_described_in_the_openapi_document() -> None:
    document = create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()
    answers = document["paths"]["/view/{session_id}"]["get"]["responses"]

    assert {"302", "401", "422", "503"} <= set(answers)
    assert "noVNC is not installed" in answers["503"]["description"]


async def test_the_view_link_without_novnc_answers_503_naming_the_install_step(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It redirected to noVNC's page, which answered a bare 404.
    monkeypatch.setattr(view, "NOVNC_DIR", tmp_path / "no-novnc")
    async with viewed(api, AuthStatus.AWAITING_USER) as view_of:
        link = await api.client.get(f"/view/{view_of.session.id}?token={view_of.token}")

    error = assert_error(link, 503, "tool_missing")
    assert error["message"] == (
        f"noVNC is not installed under {view.NOVNC_DIR}: install "
        "Debian's novnc package (apt-get install novnc, as scripts/install.sh does)"
    )


# --- the view's WebSocket refuses with a code and a reason -----------------------------------


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("ended", "this login has ended (cancelled)"),
        ("wrong token", "wrong view token"),
        ("unknown link", "unknown view link"),
    ],
)
async def test_a_view_socket_refused_at_once_is_closed_with_4401_and_why(
    api: Api, case: str, reason: str
) -> None:
    # It was refused at the handshake (HTTP 403): no code, no reason for the viewer.
    async with viewed(api, AuthStatus.AWAITING_USER) as view_of:
        url = view_of.url
        if case == "ended":
            await api.ctl.store.auth_sessions.transition(
                view_of.session.id, AuthStatus.AWAITING_USER, AuthStatus.CANCELLED
            )
        elif case == "wrong token":
            url = url.replace(view_of.token, "x" * len(view_of.token))
        else:
            url = url.replace(view_of.session.id, "auth-view-unknown")

        assert await refused(url) == (4401, reason)
        assert view_of.vnc.open == 0


async def test_a_waiting_view_socket_whose_login_ends_is_closed_with_4401_and_why(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = reads_of_logins(api, monkeypatch)
    async with viewed(api, AuthStatus.BROWSER_VM_STARTING) as view_of:
        waiting = asyncio.create_task(refused(view_of.url))

        async def seen_waiting() -> bool:
            return len(reads) >= 2  # the token's check, then the wait's first read

        await until(seen_waiting)
        await api.ctl.store.auth_sessions.transition(
            view_of.session.id, AuthStatus.BROWSER_VM_STARTING, AuthStatus.CANCELLED
        )

        assert await waiting == (4401, "this login has ended (cancelled)")
        assert view_of.vnc.open == 0


# --- the view dies with the API key that started its login ----------------------------------

REVOKED = "the API key that started this login was revoked"


async def test_a_login_started_through_the_api_keeps_the_key_that_asked(api: Api) -> None:
    minted = await api.client.post("/api/keys", json={"userId": "ann"}, headers=api.headers())
    key = minted.json()
    started = await api.client.post(
        "/api/auth/start", json={"provider": "codex"}, headers=api.headers(key["key"])
    )
    assert started.status_code == 202, started.text
    session_id = started.json()["sessionId"]

    assert (await api.ctl.store.auth_sessions.get(session_id)).api_key_id == key["id"]
    await api.client.post(f"/api/auth/session/{session_id}/cancel", headers=api.headers())


async def test_a_view_whose_key_is_revoked_closes_with_4401_and_its_link_is_dead(
    novnc_api: Api,
) -> None:
    # The view link and an open view went on after the key that started the login was revoked,
    # unlike every stream of that key (exec, events, downloads), which breaks off.
    api = novnc_api
    minted = await api.client.post("/api/keys", json={"userId": "ann"}, headers=api.headers())
    key_id = minted.json()["id"]
    async with viewed(api, AuthStatus.AWAITING_USER, api_key_id=key_id) as view_of:
        viewer = await relayed(view_of.url)
        revoked = await api.client.delete(f"/api/keys/{key_id}", headers=api.headers())
        assert revoked.status_code == 200, revoked.text

        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await viewer.recv()
        assert (viewer.close_code, viewer.close_reason) == (4401, REVOKED)
        assert await refused(view_of.url) == (4401, REVOKED)
        link = await api.client.get(f"/view/{view_of.session.id}?token={view_of.token}")
        assert assert_error(link, 401, "unauthorized")["message"] == REVOKED
        # The login itself is the user's, not the key's: it goes on awaiting them.
        row = await api.ctl.store.auth_sessions.get(view_of.session.id)
        assert row.status is AuthStatus.AWAITING_USER
