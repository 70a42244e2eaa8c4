"""A delivery retried for days lists as its attempt count and latest attempts; its whole history
pages through its own route, on SQLite and PostgreSQL.

In process over the fake backend. The deliveries are written straight to the store, each
pending with its next attempt a day away, so the running dispatcher leaves them alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.events.types import DeliveryStatus
from hearth.store import Store
from hearth.store.models import webhook_deliveries_table
from hearth.store.records import AttemptRecord, utc_now
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.store_fixtures import new_webhook

TRIED = 12  # attempts of the long-retried delivery: more than a listing shows
LATEST_ATTEMPTS = 5  # what a listing shows of each delivery
# Nothing is sent to it: every delivery here waits a day for its next attempt.
HOOK_URL = "http://127.0.0.1:9/hook"


@pytest.fixture
async def api(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller, receivers on loopback allowed."""
    settings = api_settings.with_overrides(webhook_allow_private=True)
    async with running_api(settings, fake_backend, tmp_path / "image") as running:
        yield running


async def owe(store: Store, hook_id: str, delivery_id: str, *, attempts: int) -> None:
    """A delivery of a new event to ``hook_id`` that has failed ``attempts`` times so far."""
    event, _ = await store.events.append(
        type="vm.ready", user_id=None, vm_id="vm-1", data="{}", retry_for=timedelta(days=1)
    )
    now = utc_now()
    later = now + timedelta(days=1)
    async with store.engine.begin() as conn:
        await conn.execute(
            webhook_deliveries_table.insert().values(
                id=delivery_id,
                webhook_id=hook_id,
                event_id=event.id,
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=later,
                give_up_at=now + timedelta(days=30),
                created_at=now,
                updated_at=now,
            )
        )
    for n in range(1, attempts + 1):
        attempt = AttemptRecord(
            delivery_id=delivery_id,
            n=n,
            at=now + timedelta(seconds=n),
            status_code=500,
            error=f"the receiver answered 500 (try {n})",
            duration_ms=n,
        )
        assert await store.webhooks.record_attempt(
            attempt, status=DeliveryStatus.PENDING, next_attempt_at=later
        )


async def make_webhook(api: Api) -> str:
    created = await api.client.post(
        "/api/webhooks",
        json={"url": HOOK_URL, "events": ["vm.failed"]},
        headers=api.headers(),
    )
    assert created.status_code == 201, created.text
    hook_id = created.json()["id"]
    assert isinstance(hook_id, str)
    return hook_id


async def get_json(api: Api, url: str) -> dict[str, Any]:
    answer = await api.client.get(url, headers=api.headers())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body, dict)
    return body


async def test_a_listed_delivery_carries_its_attempt_count_and_only_its_latest_attempts(
    api: Api,
) -> None:
    hook_id = await make_webhook(api)
    await owe(api.ctl.store, hook_id, "dl-long", attempts=TRIED)
    await owe(api.ctl.store, hook_id, "dl-short", attempts=2)

    body = await get_json(api, f"/api/webhooks/{hook_id}/deliveries?limit=1000")

    by_id = {delivery["id"]: delivery for delivery in body["deliveries"]}
    assert set(by_id) == {"dl-long", "dl-short"}
    long, short = by_id["dl-long"], by_id["dl-short"]
    assert long["attemptCount"] == TRIED
    # The latest, oldest of them first (as the whole list was): the last one is the newest.
    assert [a["n"] for a in long["attempts"]] == list(range(TRIED - LATEST_ATTEMPTS + 1, TRIED + 1))
    assert long["attempts"][-1]["error"] == f"the receiver answered 500 (try {TRIED})"
    assert short["attemptCount"] == 2
    assert [a["n"] for a in short["attempts"]] == [1, 2]


async def test_a_deliverys_whole_attempt_history_pages_newest_first(api: Api) -> None:
    hook_id = await make_webhook(api)
    await owe(api.ctl.store, hook_id, "dl-long", attempts=TRIED)
    url = f"/api/webhooks/{hook_id}/deliveries/dl-long/attempts"

    seen: list[int] = []
    pages = 0
    query = "?limit=5"
    while True:
        page = await get_json(api, url + query)
        pages += 1
        assert page["attemptCount"] == TRIED
        assert len(page["attempts"]) <= 5
        seen += [attempt["n"] for attempt in page["attempts"]]
        if page["nextBefore"] is None:
            break
        assert page["nextBefore"] == seen[-1]
        query = f"?limit=5&before={page['nextBefore']}"

    assert seen == list(range(TRIED, 0, -1))
    assert pages == 3
    first = (await get_json(api, url))["attempts"][0]
    assert first["statusCode"] == 500
    assert first["error"] == f"the receiver answered 500 (try {TRIED})"
    assert first["durationMs"] == TRIED


async def test_attempts_of_an_unknown_delivery_or_webhook_are_404_and_bad_pages_422(
    api: Api,
) -> None:
    hook_id = await make_webhook(api)
    other_id = await make_webhook(api)
    await owe(api.ctl.store, hook_id, "dl-mine", attempts=1)

    for url, fragment in [
        (f"/api/webhooks/{hook_id}/deliveries/dl-none/attempts", "dl-none"),
        (f"/api/webhooks/{other_id}/deliveries/dl-mine/attempts", "dl-mine"),  # not its own
        ("/api/webhooks/wh-none/deliveries/dl-mine/attempts", "wh-none"),
    ]:
        answer = await api.client.get(url, headers=api.headers())
        assert fragment in assert_error(answer, 404, "not_found")["message"], url
    base = f"/api/webhooks/{hook_id}/deliveries/dl-mine/attempts"
    for query in ("?limit=0", "?limit=1001", "?before=0", f"?before={2**31}"):
        answer = await api.client.get(base + query, headers=api.headers())
        assert_error(answer, 422, "invalid_input")
    user = api.headers(await api.user_key("ann"))
    assert (await api.client.get(base, headers=user)).status_code == 403


async def test_the_openapi_documents_the_attempt_history_route(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    route = document["paths"]["/api/webhooks/{webhook_id}/deliveries/{delivery_id}/attempts"]
    responses = route["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AttemptList"
    )
    assert {"401", "403", "404", "422"} <= set(responses)
    delivery = document["components"]["schemas"]["DeliveryOut"]["properties"]
    assert {"attemptCount", "attempts"} <= set(delivery)


async def test_the_store_reads_only_each_deliverys_latest_attempts(store: Store) -> None:
    hook = await store.webhooks.insert(new_webhook(id="wh-1", events=("vm.failed",)))
    await owe(store, hook.id, "dl-long", attempts=TRIED)
    await owe(store, hook.id, "dl-short", attempts=3)

    read = await store.webhooks.attempts(["dl-long", "dl-short"], latest=LATEST_ATTEMPTS)

    assert [(a.delivery_id, a.n) for a in read] == [
        *[("dl-long", n) for n in range(TRIED - LATEST_ATTEMPTS + 1, TRIED + 1)],
        *[("dl-short", n) for n in (1, 2, 3)],
    ]
    page = await store.webhooks.attempt_page("dl-long", before=TRIED - 1, limit=4)
    assert [a.n for a in page] == [TRIED - 2, TRIED - 3, TRIED - 4, TRIED - 5]
