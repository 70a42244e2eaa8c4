"""The auth API's contract and failure paths that need no VM, in process on SQLite and
PostgreSQL: input validation, an unconfigured provider (refused at the start), and sessions and
credentials private to their user.

A vendor login whose Browser VM image lacks the vendor's CLI needs a real image and agent; it
stays in ``tests/vm/test_auth_api.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error

TERMINAL = ("completed", "failed", "timeout", "cancelled")
POLL_S = 0.05
POLL_ROUNDS = 200


async def wait_for_end(api: Api, session_id: str, key: str | None = None) -> dict[str, Any]:
    """Poll the session (with ``key``, default the admin's) until it has ended; its body."""
    for _ in range(POLL_ROUNDS):
        response = await api.client.get(f"/api/auth/session/{session_id}", headers=api.headers(key))
        session: dict[str, Any] = response.json()["session"]
        if session["status"] in TERMINAL:
            return session
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"session {session_id} never ended")


async def test_unknown_provider_is_422_and_starts_nothing(api: Api) -> None:
    error = assert_error(
        await api.client.post(
            "/api/auth/start", json={"userId": "u1", "provider": "github"}, headers=api.headers()
        ),
        422,
        "invalid_input",
    )
    assert "provider" in error["message"]
    sessions = await api.client.get("/api/auth/sessions", headers=api.headers())
    assert sessions.json()["sessions"] == []
    assert api.backend.created == []


async def test_unconfigured_oidc_is_refused_at_once_with_its_reason_and_starts_nothing(
    api: Api,
) -> None:
    # It answered 202 with a view link, and the session failed a moment later in the background.
    key = await api.user_key("u2")
    started = await api.client.post(
        "/api/auth/start", json={"provider": "oidc"}, headers=api.headers(key)
    )

    # Not a server error: the request names what this controller cannot do (and a fuzzer
    # that sends it must not see a 5xx).
    error = assert_error(started, 422, "invalid_input")
    assert error["message"] == (
        "provider: the oidc provider is not configured: set HEARTH_OIDC_ISSUER; "
        "no login was started"
    )
    sessions = await api.client.get("/api/auth/sessions", headers=api.headers(key))
    assert sessions.json()["sessions"] == []
    assert api.backend.created == []


async def test_the_start_documents_its_refusal_of_an_unconfigured_provider(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    refusal = schema["paths"]["/api/auth/start"]["post"]["responses"]["422"]
    assert "not configured" in refusal["description"]
    assert "HEARTH_OIDC_ISSUER" in refusal["description"]


async def test_sessions_and_credentials_are_private_to_their_user(api: Api) -> None:
    a_key = await api.user_key("ua")
    a = api.headers(a_key)
    b = api.headers(await api.user_key("ub"))
    client = api.client
    started = (await client.post("/api/auth/start", json={"provider": "codex"}, headers=a)).json()
    sid = started["sessionId"]

    assert_error(await client.get(f"/api/auth/session/{sid}", headers=b), 404, "not_found")
    assert_error(await client.post(f"/api/auth/session/{sid}/cancel", headers=b), 404, "not_found")
    assert (await client.get("/api/auth/sessions", headers=b)).json()["sessions"] == []
    assert_error(await client.get("/api/auth/sessions?userId=ua", headers=b), 403, "forbidden")
    assert_error(await client.get("/api/credentials/ua", headers=b), 403, "forbidden")
    assert_error(
        await client.post("/api/auth/start", json={"userId": "ua", "provider": "codex"}, headers=b),
        403,
        "forbidden",
    )
    facts = (await client.get("/api/credentials/ua", headers=a)).json()
    assert {c["provider"] for c in facts["credentials"]} >= {"oidc", "codex"}
    assert all(c["present"] is False for c in facts["credentials"])
    # ua still sees the session b could not.
    listed = (await client.get("/api/auth/sessions", headers=a)).json()["sessions"]
    assert [s["session_id"] for s in listed] == [sid]
    await wait_for_end(api, sid, a_key)
