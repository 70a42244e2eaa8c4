"""The auth API against a real controller and real VMs: what needs a real image and agent.

A vendor login whose Browser VM boots an image without the vendor's CLI fails naming the missing
command (the real agent in the real image refuses to start it). The auth API's validation and
the privacy of sessions and credentials are tested in process, on SQLite and PostgreSQL, in
``tests/integration/test_api_auth_routes.py``; so this runs on SQLite only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vm,
    pytest.mark.parametrize("backend", ["sqlite"]),
]


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
