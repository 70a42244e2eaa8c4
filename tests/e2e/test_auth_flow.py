"""The whole auth flow for real: CLI VM, Browser VM with Chromium, oidc-provider, delivery.

The test plays the user: it watches the Browser VM's screen through the controller's noVNC view
(headless Chromium on the host) and types the password into the login page in the VM's own
Chromium (over the VM's DevTools, forwarded to a loopback port, with ``hearth.bench.signin``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright

from hearth.bench.signin import CdpPage, open_sign_in_page, submit_consent, submit_login
from hearth.images.manifest import ImageDir
from tests.conftest import REPO
from tests.e2e.flow_fixtures import *  # noqa: F403
from tests.e2e.flow_fixtures import E2eOidc, auth_controller_for
from tests.vm.api_fixtures import Api
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.conftest import qemu_pids_under

pytestmark = [pytest.mark.slow, pytest.mark.vm]

ARTIFACTS = REPO / "artifacts"
DEVTOOLS_PORT = 9223
ENDED = ("completed", "failed", "timeout", "cancelled")


async def session_of(api: Api, session_id: str) -> dict[str, Any]:
    async with api.client() as admin:
        body: dict[str, Any] = (await admin.get(f"/api/auth/session/{session_id}")).json()
    return body["session"]


async def wait_status(
    api: Api, session_id: str, wanted: tuple[str, ...], timeout_s: float = 600
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        session = await session_of(api, session_id)
        if session["status"] in wanted:
            return session
        assert session["status"] not in ENDED, f"session ended early: {session}"
        assert asyncio.get_running_loop().time() < deadline, f"stuck at {session['status']}"
        await asyncio.sleep(0.5)


async def start(api: Api, user: str) -> str:
    async with api.client() as admin:
        response = await admin.post("/api/auth/start", json={"userId": user, "provider": "oidc"})
    assert response.status_code == 202, response.text
    session_id: str = response.json()["sessionId"]
    return session_id


async def sign_in(
    api: Api, browser_vm_id: str, issuer: str, password: str, *, timeout_s: float = 120
) -> CdpPage:
    """Type alice's credentials into the provider's sign-in page inside the Browser VM."""
    port = api.ctl.vms.live[browser_vm_id].ports[DEVTOOLS_PORT]
    page = await open_sign_in_page(port, issuer, timeout_s=timeout_s)
    await submit_login(page, login="alice", password=password)
    return page


async def screen_through_view(api: Api, view_url: str) -> int:
    """Open the noVNC view in headless Chromium on the host; return distinct colours seen."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(f"{api.url}{view_url}", timeout=60_000)
            await page.wait_for_selector("canvas", timeout=60_000)
            colours = 0
            for _ in range(60):
                colours = int(
                    await page.evaluate(
                        """() => {
                          const c = document.querySelector('canvas');
                          if (!c || !c.width) return 0;
                          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                          const seen = new Set();
                          for (let i = 0; i < d.length; i += 4 * 97)
                            seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]);
                          return seen.size;
                        }"""
                    )
                )
                if colours > 4:
                    break
                await asyncio.sleep(1)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser-vm-view.png"))
            return colours
        finally:
            await browser.close()


async def test_oidc_login_completes_and_credentials_reach_the_cli_vm(
    auth_controller: Api, e2e_oidc: E2eOidc, capfd: pytest.CaptureFixture[str]
) -> None:
    api = auth_controller
    async with api.client() as admin:
        first = await admin.post("/api/auth/start", json={"userId": "alice", "provider": "oidc"})
        assert first.status_code == 202, first.text
        session_id, view_url = first.json()["sessionId"], first.json()["viewUrl"]
        again = await admin.post("/api/auth/start", json={"userId": "alice", "provider": "oidc"})
        assert again.json()["sessionId"] == session_id, "a second start must not duplicate"
        assert again.json()["viewUrl"] is None, "the view link is shown once"
    waiting = await wait_status(api, session_id, ("awaiting_user",))
    assert waiting["login_url"].startswith(e2e_oidc.issuer)
    browser_vm_id = waiting["browser_vm_id"]

    colours = await screen_through_view(api, view_url)
    assert colours > 4, "the view showed a blank screen"

    page = await sign_in(api, browser_vm_id, e2e_oidc.issuer, "wonderland")
    try:
        await submit_consent(page)
    finally:
        await page.close()

    done = await wait_status(api, session_id, ("completed",), timeout_s=300)
    assert done["completed_at"] is not None
    cli_vm_id = done["vm_id"]

    # The document is in the CLI VM, written by its agent with mode 0600, and it is ours.
    cli_token = api.ctl.vms.agent_token(cli_vm_id)
    cli_url = api.ctl.vms.live[cli_vm_id].agent_url
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {cli_token}"}) as agent:
        meta = (await agent.get(f"{cli_url}/credentials/oidc")).json()
        document = (await agent.get(f"{cli_url}/credentials/oidc?content=true")).json()["document"]
    assert meta["present"] is True
    assert meta["mode"] == "0600"
    async with api.client() as admin:
        facts = (await admin.get("/api/credentials/alice")).json()["credentials"]
        browser_vm = (await admin.get(f"/api/vms/{browser_vm_id}")).json()
    oidc_facts = next(f for f in facts if f["provider"] == "oidc")
    assert oidc_facts["present"] is True
    assert oidc_facts["sha256"] == meta["sha256"]
    assert oidc_facts["delivered_to"] == cli_vm_id
    assert browser_vm["status"] == "destroyed"
    assert qemu_pids_under(api.settings.state_dir / "vms" / browser_vm_id) == []

    # No secret in the database file or in anything the controller logged.
    secrets = (document["access_token"], document["refresh_token"])
    database = (api.settings.state_dir / "hearth.db").read_bytes()
    wal = api.settings.state_dir / "hearth.db-wal"
    if wal.exists():
        database += wal.read_bytes()
    logged = capfd.readouterr()
    for secret in secrets:
        assert secret.encode() not in database
        assert secret not in logged.out + logged.err

    # Refresh ownership: the CLI VM owns the token now. It refreshes (rotating the refresh
    # token) and writes the new document; destroying the VM pulls that document back.
    async with httpx.AsyncClient() as client:
        refreshed = await client.post(
            e2e_oidc.host_token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": document["refresh_token"],
                "client_id": "hearth-test",
            },
        )
    assert refreshed.status_code == 200, refreshed.text
    tokens = refreshed.json()
    assert tokens["refresh_token"] != document["refresh_token"]
    rotated = {
        **document,
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "expires_at": document["expires_at"] + 3600,
    }
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {cli_token}"}) as agent:
        written = await agent.put(f"{cli_url}/credentials/oidc", json=rotated)
        assert written.status_code == 200
    async with api.client() as admin:
        assert (await admin.delete(f"/api/vms/{cli_vm_id}")).json()["status"] == "destroyed"
        after = (await admin.get("/api/credentials/alice")).json()["credentials"]
    pulled = next(f for f in after if f["provider"] == "oidc")
    assert pulled["sha256"] != oidc_facts["sha256"], "the rotated document was not pulled back"
    # The controller never used the delivered refresh token: had it done so, oidc-provider would
    # have revoked the grant on the CLI's reuse above, and this refresh would fail.
    async with httpx.AsyncClient() as client:
        again_refresh = await client.post(
            e2e_oidc.host_token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": "hearth-test",
            },
        )
    assert again_refresh.status_code == 200, again_refresh.text


async def test_wrong_password_keeps_waiting_and_cancel_destroys_the_browser_vm(
    auth_controller: Api, e2e_oidc: E2eOidc
) -> None:
    api = auth_controller
    session_id = await start(api, "bob")
    waiting = await wait_status(api, session_id, ("awaiting_user",))
    page = await sign_in(api, waiting["browser_vm_id"], e2e_oidc.issuer, "not-the-password")
    try:
        # The provider shows its sign-in form again, with an error.
        await page.wait_for("document.querySelectorAll('[role=alert]').length > 0")
    finally:
        await page.close()
    assert (await session_of(api, session_id))["status"] == "awaiting_user"
    async with api.client() as admin:
        cancelled = await admin.post(f"/api/auth/session/{session_id}/cancel")
        assert cancelled.json()["session"]["status"] == "cancelled"
        browser_vm = (await admin.get(f"/api/vms/{waiting['browser_vm_id']}")).json()
    assert browser_vm["status"] == "destroyed"


async def test_browser_vm_killed_fails_the_session_with_a_reason(
    auth_controller: Api,
) -> None:
    api = auth_controller
    session_id = await start(api, "carol")
    waiting = await wait_status(api, session_id, ("awaiting_user",))
    pid = api.ctl.vms.live[waiting["browser_vm_id"]].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    ended = await wait_status(api, session_id, ENDED, timeout_s=60)
    assert ended["status"] == "failed"
    assert "Browser VM" in ended["error_message"]


async def test_user_who_never_logs_in_times_out_and_the_browser_vm_goes(
    minimal_image: ImageDir,
    browser_image: ImageDir,
    vm_state_dir: Path,
    e2e_oidc: E2eOidc,
    tmp_path: Path,
) -> None:
    async for api in auth_controller_for(
        database_url=None,
        state=tmp_path / "state",
        minimal_image=minimal_image,
        browser_image=browser_image,
        template_dir=vm_state_dir / "templates",
        oidc=e2e_oidc,
        login_timeout_s=15,
    ):
        session_id = await start(api, "dave")
        ended = await wait_status(api, session_id, ENDED, timeout_s=600)
        assert ended["status"] == "timeout"
        assert "log in" in ended["error_message"]
        async with api.client() as admin:
            browser_vm = (await admin.get(f"/api/vms/{ended['browser_vm_id']}")).json()
        assert browser_vm["status"] == "destroyed"
