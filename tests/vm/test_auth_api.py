"""The auth API's contract and failure paths that need no browser: real controller and VMs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api
from tests.vm.test_api import assert_error, user_key

pytestmark = [pytest.mark.slow, pytest.mark.vm]


async def wait_for_end(api: Api, session_id: str, key: str | None = None) -> dict[str, Any]:
    async with api.client(key) as client:
        for _ in range(600):
            session: dict[str, Any] = (await client.get(f"/api/auth/session/{session_id}")).json()[
                "session"
            ]
            if session["status"] in ("completed", "failed", "timeout", "cancelled"):
                return session
            await asyncio.sleep(0.2)
    raise AssertionError(f"session {session_id} never ended")


async def test_unknown_provider_is_422_and_starts_nothing(controller: Api) -> None:
    async with controller.client() as admin:
        error = assert_error(
            await admin.post("/api/auth/start", json={"userId": "u1", "provider": "github"}),
            422,
            "invalid_input",
        )
        assert "provider" in error["message"]
        assert (await admin.get("/api/auth/sessions")).json()["sessions"] == []


async def test_unconfigured_oidc_fails_with_a_reason_and_no_browser_vm(controller: Api) -> None:
    key = await user_key(controller, "u2")
    async with controller.client(key) as user:
        started = await user.post("/api/auth/start", json={"provider": "oidc"})
        assert started.status_code == 202
        body = started.json()
        assert body["viewUrl"].startswith(f"/view/{body['sessionId']}?token=")
    session = await wait_for_end(controller, body["sessionId"], key)
    assert session["status"] == "failed"
    assert "HEARTH_OIDC_ISSUER" in session["error_message"]
    assert session["browser_vm_id"] is None
    async with controller.client(key) as user:
        # The view link died with the session.
        view = await user.get(body["viewUrl"], follow_redirects=False)
        assert_error(view, 401, "unauthorized")
        assert_error(
            await user.post(f"/api/auth/session/{body['sessionId']}/cancel"), 409, "conflict"
        )


async def test_vendor_login_in_a_browser_image_without_the_cli_fails_naming_it(
    controller: Api,
) -> None:
    # This controller's Browser VMs boot the minimal image, which has no vendor CLIs: the agent's
    # vendor runner refuses to start and the session fails saying what is missing.
    async with controller.client() as admin:
        started = (
            await admin.post("/api/auth/start", json={"userId": "u3", "provider": "codex"})
        ).json()
    session = await wait_for_end(controller, started["sessionId"])
    assert session["status"] == "failed"
    assert "the 'codex' command is not installed in this VM" in session["error_message"]
    assert session["browser_vm_id"] is not None
    async with controller.client() as admin:
        browser = await admin.get(f"/api/vms/{session['browser_vm_id']}")
        assert browser.status_code == 404 or browser.json()["status"] == "destroyed"


async def test_sessions_and_credentials_are_private_to_their_user(controller: Api) -> None:
    a_key = await user_key(controller, "ua")
    b_key = await user_key(controller, "ub")
    async with controller.client(a_key) as a, controller.client(b_key) as b:
        started = (await a.post("/api/auth/start", json={"provider": "oidc"})).json()
        sid = started["sessionId"]
        assert_error(await b.get(f"/api/auth/session/{sid}"), 404, "not_found")
        assert_error(await b.post(f"/api/auth/session/{sid}/cancel"), 404, "not_found")
        assert (await b.get("/api/auth/sessions")).json()["sessions"] == []
        assert_error(await b.get("/api/auth/sessions?userId=ua"), 403, "forbidden")
        assert_error(await b.get("/api/credentials/ua"), 403, "forbidden")
        assert_error(
            await b.post("/api/auth/start", json={"userId": "ua", "provider": "oidc"}),
            403,
            "forbidden",
        )
        facts = (await a.get("/api/credentials/ua")).json()
        assert {c["provider"] for c in facts["credentials"]} >= {"oidc", "codex"}
        assert all(c["present"] is False for c in facts["credentials"])
    await wait_for_end(controller, sid, a_key)
