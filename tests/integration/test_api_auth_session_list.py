"""``GET /api/auth/sessions`` a page at a time, in process on SQLite and PostgreSQL: ``?limit=``
(100 by default, at most 1000), pages that follow ``nextAfter`` oldest first without skipping a
session made between two pages, each session in the fields the original controller's clients
read, a user key kept to its own sessions; the SDK (sync and async) reads every page.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from hearth.auth.states import AuthStatus
from hearth.sdk import AsyncHearth, Hearth
from hearth.store.records import utc_now
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import BASE_URL, Api, assert_error, served
from tests.integration.store_fixtures import new_auth_session

SEEDED = 105  # past the default page of 100
SESSION_FIELDS = {
    "session_id",
    "user_id",
    "provider",
    "status",
    "vm_id",
    "vm_ip",
    "browser_vm_id",
    "login_url",
    "error_message",
    "created_at",
    "updated_at",
    "completed_at",
}


async def seed_ended(api: Api, user_id: str, count: int) -> list[str]:
    """``count`` cancelled sessions of ``user_id`` written straight to the store (half of them
    made at one instant: their order is their ids'); their ids in listing order."""
    await api.ctl.store.users.ensure(user_id)
    start = utc_now() - timedelta(hours=1)
    made = []
    for n in range(count):
        record = new_auth_session(
            user_id,
            id=f"as-seed-{user_id}-{count - n:04d}",
            status=AuthStatus.CANCELLED,
            created_at=start + timedelta(seconds=n if n < count // 2 else count),
        )
        made.append(await api.ctl.store.auth_sessions.insert(record))
    made.sort(key=lambda record: (record.created_at, record.id))
    return [record.id for record in made]


async def page(api: Api, query: str = "", key: str | None = None) -> tuple[list[str], str | None]:
    """The session ids (in order) and ``nextAfter`` of ``GET /api/auth/sessions?<query>``."""
    answer = await api.client.get(f"/api/auth/sessions?{query}", headers=api.headers(key))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [session["session_id"] for session in body["sessions"]], body["nextAfter"]


async def test_sessions_come_a_page_at_a_time_oldest_first_in_the_fields_clients_read(
    api: Api,
) -> None:
    seeded = await seed_ended(api, "ua", SEEDED)
    others = await seed_ended(api, "ub", 3)
    key = await api.user_key("ua")

    first, after = await page(api, key=key)
    assert (first, after) == (seeded[:100], seeded[99])
    answer = await api.client.get("/api/auth/sessions?limit=1", headers=api.headers(key))
    [session] = answer.json()["sessions"]
    assert set(session) == SESSION_FIELDS
    assert (session["session_id"], session["status"]) == (seeded[0], "cancelled")

    started = await api.client.post(
        "/api/auth/start", json={"provider": "codex"}, headers=api.headers(key)
    )
    made_meanwhile = started.json()["sessionId"]
    assert await page(api, f"after={after}", key=key) == ([*seeded[100:], made_meanwhile], None)

    assert await page(api, "limit=2", key=key) == (seeded[:2], seeded[1])
    assert await page(api, "limit=1000", key=key) == ([*seeded, made_meanwhile], None)
    assert await page(api, "userId=ub") == (others, None)


async def test_a_bad_limit_or_an_after_naming_no_session_of_the_caller_is_422(api: Api) -> None:
    await seed_ended(api, "ua", 2)
    theirs = await seed_ended(api, "ub", 1)
    key = await api.user_key("ua")
    for query in ("limit=0", "limit=1001", "after="):
        answer = await api.client.get(f"/api/auth/sessions?{query}", headers=api.headers(key))
        assert_error(answer, 422, "invalid_input")
    for after in ("as-none", theirs[0]):
        answer = await api.client.get(f"/api/auth/sessions?after={after}", headers=api.headers(key))
        assert_error(answer, 422, "invalid_input")
        assert "does not exist" in answer.json()["error"]["message"]
    assert theirs[0] not in (await page(api, f"after={theirs[0]}"))[0], "an admin may"


async def test_the_openapi_document_describes_the_paging(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    operation = document["paths"]["/api/auth/sessions"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"userId", "after", "limit"}
    assert (parameters["limit"]["schema"]["maximum"], parameters["limit"]["schema"]["default"]) == (
        1000,
        100,
    )
    assert "422" in operation["responses"]
    listing = document["components"]["schemas"]["AuthSessionList"]["properties"]
    assert set(listing) == {"sessions", "nextAfter"}
    assert set(document["components"]["schemas"]["AuthSessionOut"]["properties"]) == SESSION_FIELDS


async def test_the_sdk_reads_every_page_sync_and_async(api: Api) -> None:
    seeded = await seed_ended(api, "ann", SEEDED)
    key = await api.user_key("ann")

    transport = httpx.ASGITransport(app=api.app)
    async with AsyncHearth(BASE_URL, key, transport=transport) as client:
        assert [session.id for session in await client.auth.list()] == seeded

    async with served(api.app) as url:

        def sync_list() -> list[str]:
            with Hearth(url, key) as client:
                return [session.id for session in client.auth.list()]

        assert await asyncio.to_thread(sync_list) == seeded
