"""``GET /api/keys`` a page at a time, in process on SQLite and PostgreSQL: ``?limit=`` (100 by
default, at most 1000), pages that follow ``nextAfter`` oldest first, revoked keys included,
without skipping a key made between two pages; a bad ``limit`` or ``after`` is 422, and the
OpenAPI document says so."""

from __future__ import annotations

from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error

SEEDED = 105  # past the default page of 100


async def seed_keys(api: Api, count: int) -> list[str]:
    """``count`` keys minted straight in the store, one revoked; every key's id, oldest first
    (the admin key first)."""
    made = [(await api.ctl.store.api_keys.create(f"u{n}", admin=False))[1] for n in range(count)]
    await api.ctl.store.api_keys.revoke(made[3].id)
    return [record.id for record in await api.ctl.store.api_keys.list()]


async def page(api: Api, query: str = "") -> tuple[list[str], str | None]:
    """The key ids (in order) and ``nextAfter`` of ``GET /api/keys?<query>``."""
    answer = await api.client.get(f"/api/keys?{query}", headers=api.headers())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert all(key.get("key") is None for key in body["keys"]), "a listing never shows a key"
    return [key["id"] for key in body["keys"]], body["nextAfter"]


async def test_keys_come_a_page_at_a_time_oldest_first_revoked_ones_included(api: Api) -> None:
    every_key = await seed_keys(api, SEEDED)
    assert len(every_key) == SEEDED + 1  # and the admin key

    first, after = await page(api)
    assert (first, after) == (every_key[:100], every_key[99])
    made_meanwhile = (await api.ctl.store.api_keys.create("late", admin=False))[1].id
    assert await page(api, f"after={after}") == ([*every_key[100:], made_meanwhile], None)

    assert await page(api, "limit=2") == (every_key[:2], every_key[1])
    assert await page(api, f"limit=2&after={every_key[1]}") == (every_key[2:4], every_key[3])
    assert await page(api, "limit=1000") == ([*every_key, made_meanwhile], None)
    answer = await api.client.get(f"/api/keys?limit=1&after={every_key[3]}", headers=api.headers())
    [revoked] = answer.json()["keys"]
    assert revoked["id"] == every_key[4]
    revoked_answer = await api.client.get("/api/keys?limit=1000", headers=api.headers())
    assert sum(k["revokedAt"] is not None for k in revoked_answer.json()["keys"]) == 1


async def test_a_short_listing_is_one_page_as_before(api: Api) -> None:
    answer = await api.client.get("/api/keys", headers=api.headers())
    assert answer.status_code == 200, answer.text
    [admin] = answer.json()["keys"]
    assert (admin["admin"], answer.json()["nextAfter"]) == (True, None)


async def test_a_bad_limit_or_an_after_naming_no_key_is_422(api: Api) -> None:
    await seed_keys(api, 5)
    for query in ("limit=0", "limit=1001", "limit=x", "after=", f"after={'k' * 129}"):
        answer = await api.client.get(f"/api/keys?{query}", headers=api.headers())
        assert_error(answer, 422, "invalid_input")
    answer = await api.client.get("/api/keys?after=key_none", headers=api.headers())
    assert_error(answer, 422, "invalid_input")
    assert "does not exist" in answer.json()["error"]["message"]


async def test_a_user_key_may_not_list_keys(api: Api) -> None:
    key = await api.user_key("ann")
    answer = await api.client.get("/api/keys?limit=1", headers=api.headers(key))
    assert_error(answer, 403, "forbidden")


async def test_the_openapi_document_describes_the_paging(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    operation = document["paths"]["/api/keys"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"after", "limit"}
    limit = parameters["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 1000, 100)
    assert parameters["after"]["schema"]["anyOf"][0]["maxLength"] == 128
    assert "422" in operation["responses"]
    listing = document["components"]["schemas"]["KeyList"]["properties"]
    assert set(listing) == {"keys", "nextAfter"}
