"""Users and API keys on a real database: idempotent users, hashed keys, revocation."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text

from hearth.config import Settings
from hearth.control.bootstrap import ensure_admin_key
from hearth.errors import ConfigError, Conflict, InvalidInput, NotFound
from hearth.store import ApiKeyRecord, Store
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import TEST_KEY_SECRET, FakeClock

OPERATOR_KEY = "operator-supplied-admin-key-0123456789abcdef"


async def raw_key_rows(store: Store) -> list[dict[str, object]]:
    """Every api_keys row exactly as stored."""
    async with store.engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM api_keys ORDER BY created_at, id"))
        return [dict(row._mapping) for row in result]


# --- users -------------------------------------------------------------------------------------


async def test_ensure_creates_a_user_once_and_then_returns_it_unchanged(store: Store) -> None:
    first = await store.users.ensure("alice")
    again = await store.users.ensure("alice")
    assert again == first
    assert await store.users.get("alice") == first
    assert [u.id for u in await store.users.list()] == ["alice"]


async def test_twenty_concurrent_ensures_of_one_user_leave_exactly_one_row(store: Store) -> None:
    records = await asyncio.gather(*(store.users.ensure("racer") for _ in range(20)))
    assert len(set(records)) == 1
    async with store.engine.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM users WHERE id = 'racer'"))
    assert count == 1


async def test_get_of_an_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="nobody"):
        await store.users.get("nobody")


async def test_users_are_listed_oldest_first(clocked_store: Store, clock: FakeClock) -> None:
    for name in ("carol", "alice", "bob"):
        await clocked_store.users.ensure(name)
        clock.advance(1)
    assert [u.id for u in await clocked_store.users.list()] == ["carol", "alice", "bob"]


@pytest.mark.parametrize("user_id", ["", "   ", "x" * 129, "a\nb"])
async def test_ensure_rejects_blank_overlong_or_control_character_ids(
    store: Store, user_id: str
) -> None:
    with pytest.raises(InvalidInput):
        await store.users.ensure(user_id)


# --- creating and authenticating keys ----------------------------------------------------------


async def test_a_created_key_authenticates_and_only_its_keyed_hash_is_stored(
    store: Store,
) -> None:
    plaintext, record = await store.api_keys.create("alice", admin=False)

    assert plaintext.startswith("hk_")
    assert len(plaintext) == 3 + 43
    assert record.prefix == plaintext[:8]
    authenticated = await store.api_keys.authenticate(plaintext)
    assert authenticated is not None
    assert replace(authenticated, last_used_at=None) == record
    [row] = await raw_key_rows(store)
    assert row["key_hash"] == hmac.new(TEST_KEY_SECRET, plaintext.encode(), "sha256").hexdigest()
    assert row["key_hash"] != hashlib.sha256(plaintext.encode()).hexdigest()
    assert row["key_hash_scheme"] == "hmac-sha256"
    assert all(plaintext not in str(value) for value in row.values())


async def test_an_imported_low_entropy_key_is_not_stored_as_its_bare_sha256(
    store: Store,
) -> None:
    weak = "password" * 4
    await store.api_keys.import_key(weak, user_id="admin", admin=True)
    [row] = await raw_key_rows(store)
    assert row["key_hash"] != hashlib.sha256(weak.encode()).hexdigest()
    assert row["key_hash_scheme"] == "hmac-sha256"


async def insert_legacy_key(store: Store, plaintext: str, *, user_id: str = "old") -> None:
    """A key row as a store before revision 0003 wrote it: bare sha256, scheme sha256."""
    await store.users.ensure(user_id)
    async with store.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO api_keys (id, user_id, key_hash, key_hash_scheme, prefix, is_admin,"
                " created_at) VALUES ('key_legacy', :user, :hash, 'sha256', :prefix, true, :at)"
            ),
            {
                "user": user_id,
                "hash": hashlib.sha256(plaintext.encode()).hexdigest(),
                "prefix": plaintext[:8],
                "at": datetime(2026, 1, 1, tzinfo=UTC),
            },
        )


async def test_a_key_stored_as_sha256_before_0003_authenticates_and_is_rehashed(
    store: Store,
) -> None:
    await insert_legacy_key(store, OPERATOR_KEY)

    record = await store.api_keys.authenticate(OPERATOR_KEY)

    assert record is not None
    assert record.id == "key_legacy"
    assert record.is_admin
    [row] = await raw_key_rows(store)
    assert row["key_hash_scheme"] == "hmac-sha256"
    assert row["key_hash"] != hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()
    assert (await store.api_keys.authenticate(OPERATOR_KEY)) is not None
    assert await store.api_keys.authenticate("x" + OPERATOR_KEY) is None


async def test_importing_a_key_stored_as_sha256_rehashes_its_row_instead_of_adding_one(
    store: Store,
) -> None:
    await insert_legacy_key(store, OPERATOR_KEY, user_id="admin")

    record = await store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True)

    assert record.id == "key_legacy"
    [row] = await raw_key_rows(store)
    assert row["key_hash_scheme"] == "hmac-sha256"


async def test_a_store_without_the_key_secret_cannot_mint_or_check_keys(
    database_url: str,
) -> None:
    async with await Store.open(database_url) as bare:
        with pytest.raises(ConfigError, match="secret"):
            await bare.api_keys.create("alice", admin=False)
        with pytest.raises(ConfigError, match="secret"):
            await bare.api_keys.authenticate("hk_anything")


async def test_creating_a_key_creates_its_user(store: Store) -> None:
    _, record = await store.api_keys.create("newcomer", admin=True)
    assert record.is_admin is True
    assert (await store.users.get("newcomer")).id == "newcomer"


async def test_records_and_their_repr_never_carry_the_key_or_its_hash(store: Store) -> None:
    plaintext, record = await store.api_keys.create("alice", admin=False)
    assert "key_hash" not in {f.name for f in fields(ApiKeyRecord)}
    [row] = await raw_key_rows(store)
    assert plaintext not in repr(record)
    assert str(row["key_hash"]) not in repr(record)


@pytest.mark.parametrize("attempt", ["", "hk_wrong", "x" * 10_000])
async def test_an_unknown_key_does_not_authenticate(store: Store, attempt: str) -> None:
    await store.api_keys.create("alice", admin=True)
    assert await store.api_keys.authenticate(attempt) is None


async def test_last_used_at_is_written_at_most_once_a_minute(
    clocked_store: Store, clock: FakeClock
) -> None:
    plaintext, record = await clocked_store.api_keys.create("alice", admin=False)
    assert record.last_used_at is None
    first_use = clock.now

    assert (await clocked_store.api_keys.authenticate(plaintext)) is not None
    clock.advance(30)
    seen = await clocked_store.api_keys.authenticate(plaintext)
    assert seen is not None
    assert seen.last_used_at == first_use
    assert (await raw_key_rows(clocked_store))[0]["last_used_at"] is not None
    assert (await clocked_store.api_keys.get(record.id)).last_used_at == first_use

    later = clock.advance(31)
    seen = await clocked_store.api_keys.authenticate(plaintext)
    assert seen is not None
    assert seen.last_used_at == later
    assert (await clocked_store.api_keys.get(record.id)).last_used_at == later


# --- revoking ----------------------------------------------------------------------------------


async def test_a_revoked_key_no_longer_authenticates(
    clocked_store: Store, clock: FakeClock
) -> None:
    plaintext, record = await clocked_store.api_keys.create("alice", admin=False)
    revoked = await clocked_store.api_keys.revoke(record.id)
    assert revoked.revoked_at == clock.now
    assert revoked.is_revoked
    assert await clocked_store.api_keys.authenticate(plaintext) is None


async def test_revoking_twice_keeps_the_first_revocation_time(
    clocked_store: Store, clock: FakeClock
) -> None:
    _, record = await clocked_store.api_keys.create("alice", admin=False)
    first = await clocked_store.api_keys.revoke(record.id)
    clock.advance(120)
    assert await clocked_store.api_keys.revoke(record.id) == first


async def test_revoking_an_unknown_key_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="key_missing"):
        await store.api_keys.revoke("key_missing")


async def test_keys_are_listed_per_user_with_revoked_ones_included(store: Store) -> None:
    _, a1 = await store.api_keys.create("alice", admin=False)
    _, b1 = await store.api_keys.create("bob", admin=False)
    _, a2 = await store.api_keys.create("alice", admin=True)
    await store.api_keys.revoke(a1.id)

    assert {k.id for k in await store.api_keys.list(user_id="alice")} == {a1.id, a2.id}
    assert {k.id for k in await store.api_keys.list()} == {a1.id, a2.id, b1.id}
    assert await store.api_keys.list(user_id="nobody") == []


# --- importing an operator's key ---------------------------------------------------------------


async def test_importing_an_operator_key_is_idempotent(store: Store) -> None:
    first = await store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True)
    again = await store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True)
    assert again == first
    assert first.is_admin
    assert first.prefix == OPERATOR_KEY[:8]
    assert len(await raw_key_rows(store)) == 1
    authenticated = await store.api_keys.authenticate(OPERATOR_KEY)
    assert authenticated is not None
    assert authenticated.id == first.id


async def test_concurrent_imports_of_one_key_store_it_once(store: Store) -> None:
    records = await asyncio.gather(
        *(store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True) for _ in range(10))
    )
    assert len({r.id for r in records}) == 1
    assert len(await raw_key_rows(store)) == 1


async def test_reimporting_a_revoked_key_keeps_it_revoked(store: Store) -> None:
    record = await store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True)
    await store.api_keys.revoke(record.id)
    again = await store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True)
    assert again.is_revoked
    assert await store.api_keys.authenticate(OPERATOR_KEY) is None


@pytest.mark.parametrize(("user_id", "admin"), [("someone-else", True), ("admin", False)])
async def test_importing_a_known_key_with_another_owner_or_role_is_a_conflict(
    store: Store, user_id: str, admin: bool
) -> None:
    await store.api_keys.import_key(OPERATOR_KEY, user_id="admin", admin=True)
    with pytest.raises(Conflict):
        await store.api_keys.import_key(OPERATOR_KEY, user_id=user_id, admin=admin)


@pytest.mark.parametrize("plaintext", ["too-short", "has a space in it but is long enough 123"])
async def test_importing_a_short_or_spaced_key_is_invalid_input(
    store: Store, plaintext: str
) -> None:
    with pytest.raises(InvalidInput):
        await store.api_keys.import_key(plaintext, user_id="admin", admin=True)


async def test_a_revoked_hearth_admin_key_is_told_at_start(store: Store, tmp_path: Path) -> None:
    # Re-importing never brings a revoked key back: the controller started with no working
    # admin key and said nothing.
    settings = Settings(state_dir=tmp_path / "state", admin_key="hk_" + "a" * 43)
    await ensure_admin_key(store, settings)
    [record] = await store.api_keys.list()
    await store.api_keys.revoke(record.id)

    with structlog.testing.capture_logs() as logs:
        await ensure_admin_key(store, settings)

    [told] = [entry for entry in logs if entry["event"] == "admin_key_revoked"]
    assert told["key_id"] == record.id
    assert settings.admin_key not in str(told)
