"""Credential rows on a real database: one per user and provider, newer-wins, compare-and-set."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError

from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store import CredentialRecord, CredentialSource, Store
from hearth.store.repositories.credentials import CredentialRepo
from hearth_agent import SUPPORTED_PROVIDERS
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import FakeClock, OpenStore

EXPIRY = datetime(2031, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
CONTENDERS = 6


def sealed_record(user_id: str, provider: str = "codex", **overrides: object) -> CredentialRecord:
    """A credential record with random sealed bytes; ``overrides`` replace any field."""
    values: dict[str, object] = {
        "user_id": user_id,
        "provider": provider,
        "key_id": secrets.token_hex(8),
        "nonce": secrets.token_bytes(12),
        "ciphertext": secrets.token_bytes(200),
        "sha256": secrets.token_hex(32),
        "expires_at": EXPIRY,
    }
    values.update(overrides)
    return CredentialRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
async def alice(store: Store) -> str:
    """A user who owns the credentials of a test."""
    return (await store.users.ensure("alice")).id


@pytest.fixture
async def clocked_alice(clocked_store: Store) -> str:
    """Alice, in the store whose clock the test drives."""
    return (await clocked_store.users.ensure("alice")).id


# --- put and get -------------------------------------------------------------------------------


async def test_a_stored_credential_reads_back_field_for_field(
    clocked_store: Store, clock: FakeClock, clocked_alice: str
) -> None:
    record = sealed_record(clocked_alice, "gemini_cli", source=CredentialSource.PULLED_BACK)
    stored = await clocked_store.credentials.put(record)
    expected = CredentialRecord(
        id=record.id,
        user_id="alice",
        provider="gemini_cli",
        key_id=record.key_id,
        nonce=record.nonce,
        ciphertext=record.ciphertext,
        sha256=record.sha256,
        expires_at=EXPIRY,
        source=CredentialSource.PULLED_BACK,
        created_at=clock.now,
        updated_at=clock.now,
    )
    assert stored == expected
    read = await clocked_store.credentials.get("alice", "gemini_cli")
    assert read == expected
    assert read is not None
    assert type(read.nonce) is bytes
    assert type(read.ciphertext) is bytes
    assert read.expires_at is not None
    assert read.expires_at.tzinfo is UTC


async def test_a_new_document_replaces_the_old_one_in_the_same_slot(
    clocked_store: Store, clock: FakeClock, clocked_alice: str
) -> None:
    repo = clocked_store.credentials
    first = await repo.put(sealed_record(clocked_alice))
    created = clock.now
    await repo.mark_delivered(clocked_alice, "codex", "vm-1")
    clock.advance(60)
    second = await repo.put(sealed_record(clocked_alice, expires_at=None))

    assert second.id == first.id
    assert second.created_at == created
    assert second.updated_at == clock.now
    assert second.ciphertext != first.ciphertext
    assert second.expires_at is None
    assert second.delivered_to_vm_id is None  # the new document has not been delivered
    assert second.delivered_at is None
    assert await repo.list(clocked_alice) == [second]


async def test_getting_a_credential_that_was_never_stored_is_none(store: Store, alice: str) -> None:
    assert await store.credentials.get(alice, "codex") is None
    assert await store.credentials.get("nobody", "codex") is None


async def test_storing_for_an_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="user ghost does not exist"):
        await store.credentials.put(sealed_record("ghost"))


async def test_storing_for_an_unknown_provider_is_invalid_input(store: Store, alice: str) -> None:
    with pytest.raises(InvalidInput, match="unknown provider 'aider'"):
        await store.credentials.put(sealed_record(alice, "aider"))
    assert await store.credentials.all() == []


async def test_list_returns_only_that_users_documents_ordered_by_provider(store: Store) -> None:
    for user in ("alice", "bob"):
        await store.users.ensure(user)
    for provider in ("oidc", "claude_code", "gemini_cli"):
        await store.credentials.put(sealed_record("alice", provider))
    await store.credentials.put(sealed_record("bob", "codex"))

    assert [r.provider for r in await store.credentials.list("alice")] == [
        "claude_code",
        "gemini_cli",
        "oidc",
    ]
    assert [r.provider for r in await store.credentials.list("bob")] == ["codex"]
    assert await store.credentials.list("carol") == []
    assert [(r.user_id, r.provider) for r in await store.credentials.all()] == [
        ("alice", "claude_code"),
        ("alice", "gemini_cli"),
        ("alice", "oidc"),
        ("bob", "codex"),
    ]


async def test_racing_captures_leave_exactly_one_document(
    open_store: OpenStore, store: Store, alice: str
) -> None:
    stores = [store, await open_store()]
    records = [sealed_record(alice) for _ in range(CONTENDERS)]
    results = await asyncio.gather(
        *(stores[i % 2].credentials.put(record) for i, record in enumerate(records))
    )
    [stored] = await store.credentials.list(alice)
    assert {r.id for r in results} == {stored.id}
    assert stored.nonce in {r.nonce for r in records}


async def test_delete_removes_the_document_once(store: Store, alice: str) -> None:
    await store.credentials.put(sealed_record(alice))
    assert await store.credentials.delete(alice, "codex") is True
    assert await store.credentials.delete(alice, "codex") is False
    assert await store.credentials.get(alice, "codex") is None


# --- delivery ----------------------------------------------------------------------------------


async def test_mark_delivered_records_the_vm_and_time_but_not_a_document_change(
    clocked_store: Store, clock: FakeClock, clocked_alice: str
) -> None:
    stored = await clocked_store.credentials.put(sealed_record(clocked_alice))
    clock.advance(30)
    delivered = await clocked_store.credentials.mark_delivered(
        clocked_alice, "codex", "vm-cli-1", sha256=stored.sha256
    )
    assert delivered.delivered_to_vm_id == "vm-cli-1"
    assert delivered.delivered_at == clock.now
    assert delivered.updated_at == stored.updated_at
    assert await clocked_store.credentials.get(clocked_alice, "codex") == delivered


async def test_mark_delivered_of_a_replaced_document_is_a_conflict(
    store: Store, alice: str
) -> None:
    old = await store.credentials.put(sealed_record(alice))
    await store.credentials.put(sealed_record(alice))
    with pytest.raises(Conflict, match="changed before delivery to vm-cli-1"):
        await store.credentials.mark_delivered(alice, "codex", "vm-cli-1", sha256=old.sha256)
    current = await store.credentials.get(alice, "codex")
    assert current is not None
    assert current.delivered_to_vm_id is None


async def test_mark_delivered_without_a_document_is_not_found(store: Store, alice: str) -> None:
    with pytest.raises(NotFound, match="user alice has no codex credentials"):
        await store.credentials.mark_delivered(alice, "codex", "vm-cli-1")


# --- replace_if_newer --------------------------------------------------------------------------

VM = "vm-cli-1"
DELIVERED = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def pulled_back(user_id: str, **overrides: object) -> CredentialRecord:
    """A document read back from VM ``VM``."""
    values: dict[str, object] = {"source": CredentialSource.PULLED_BACK, "delivered_to_vm_id": VM}
    values.update(overrides)
    return sealed_record(user_id, **values)


async def delivered(repo: CredentialRepo, record: CredentialRecord) -> CredentialRecord:
    """``record`` stored as delivered to ``VM`` at ``DELIVERED``."""
    return await repo.put(
        dataclasses.replace(record, delivered_to_vm_id=VM, delivered_at=DELIVERED)
    )


async def test_replace_if_newer_never_fills_an_empty_slot(store: Store, alice: str) -> None:
    # A credential deleted while its VM was asked stays deleted (and so does one never stored).
    for user in (alice, "ghost"):
        record = pulled_back(user)
        assert (
            await store.credentials.replace_if_newer(
                record, delivered_at=DELIVERED, newer_than=EXPIRY
            )
            is False
        )
    assert await store.credentials.all() == []


@pytest.mark.parametrize(
    ("offset", "replaces"),
    [
        (timedelta(hours=1), True),
        (timedelta(microseconds=1), True),
        (timedelta(0), False),
        (-timedelta(microseconds=1), False),
        (-timedelta(days=30), False),
    ],
)
async def test_replace_if_newer_keeps_whichever_expires_later(
    clocked_store: Store,
    clock: FakeClock,
    clocked_alice: str,
    offset: timedelta,
    replaces: bool,
) -> None:
    repo = clocked_store.credentials
    stored = await delivered(repo, sealed_record(clocked_alice))
    clock.advance(10)
    later = EXPIRY + offset
    pulled = pulled_back(clocked_alice, expires_at=later, delivered_at=clock.now)

    assert await repo.replace_if_newer(pulled, delivered_at=DELIVERED, newer_than=later) is (
        replaces
    )

    current = await repo.get(clocked_alice, "codex")
    assert current is not None
    if replaces:
        assert (current.nonce, current.expires_at, current.source) == (
            pulled.nonce,
            later,
            CredentialSource.PULLED_BACK,
        )
        assert (current.id, current.created_at) == (stored.id, stored.created_at)
        assert current.updated_at == clock.now
        # Still the same delivery: a later pull-back of that VM may replace it in turn.
        assert (current.delivered_to_vm_id, current.delivered_at) == (VM, DELIVERED)
    else:
        assert current == stored


@pytest.mark.parametrize(
    "since",
    ["captured", "delivered-again", "delivered-elsewhere"],
)
async def test_replace_if_newer_leaves_a_document_that_is_no_longer_that_delivery(
    store: Store, alice: str, since: str
) -> None:
    # A fresh login's document replaces the old one as it is, even when the VM's refreshed
    # copy of the old one expires later; so does a delivery made since the VM was asked.
    repo = store.credentials
    await delivered(repo, sealed_record(alice))
    if since == "captured":
        now = await repo.put(sealed_record(alice))
    elif since == "delivered-again":
        now = await repo.mark_delivered(alice, "codex", VM)
    else:
        now = await repo.mark_delivered(alice, "codex", "vm-cli-2")
    later = EXPIRY + timedelta(days=1)

    assert (
        await repo.replace_if_newer(pulled_back(alice), delivered_at=DELIVERED, newer_than=later)
        is False
    )
    assert await repo.get(alice, "codex") == now


async def test_replace_if_newer_replaces_a_document_of_unknown_expiry(
    store: Store, alice: str
) -> None:
    await delivered(store.credentials, sealed_record(alice, expires_at=None))
    pulled = pulled_back(alice)
    assert (
        await store.credentials.replace_if_newer(pulled, delivered_at=DELIVERED, newer_than=EXPIRY)
        is True
    )
    current = await store.credentials.get(alice, "codex")
    assert current is not None
    assert current.expires_at == EXPIRY


async def test_replace_if_newer_compares_instants_not_wall_clocks(store: Store, alice: str) -> None:
    repo = store.credentials
    await delivered(repo, sealed_record(alice))  # expires 05:06:07 UTC
    # 06:06 at +02:00 is 04:06 UTC: a later wall clock, an earlier instant.
    earlier = datetime(2031, 3, 4, 6, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    pulled = pulled_back(alice, expires_at=earlier)
    assert await repo.replace_if_newer(pulled, delivered_at=DELIVERED, newer_than=earlier) is False
    # 04:06 at -02:00 is 06:06 UTC: an earlier wall clock, a later instant.
    later = datetime(2031, 3, 4, 4, 6, 7, tzinfo=timezone(timedelta(hours=-2)))
    pulled = pulled_back(alice, expires_at=later)
    # The delivery's stamp, too, is an instant, whatever its offset.
    stamp = DELIVERED.astimezone(timezone(timedelta(hours=5)))
    assert await repo.replace_if_newer(pulled, delivered_at=stamp, newer_than=later) is True


async def test_replace_if_newer_refuses_a_naive_time_or_no_vm(store: Store, alice: str) -> None:
    naive = datetime(2031, 1, 1)
    for delivered_at, newer_than in ((DELIVERED, naive), (naive, EXPIRY)):
        with pytest.raises(InvalidInput, match="timezone-aware"):
            await store.credentials.replace_if_newer(
                pulled_back(alice), delivered_at=delivered_at, newer_than=newer_than
            )
    with pytest.raises(InvalidInput, match="must name the VM"):
        await store.credentials.replace_if_newer(
            sealed_record(alice), delivered_at=DELIVERED, newer_than=EXPIRY
        )


async def test_racing_pull_backs_leave_the_latest_expiry(
    open_store: OpenStore, store: Store, alice: str
) -> None:
    # Pull-backs of one delivery (the interval's and a destroy's, or two controllers') race.
    await delivered(store.credentials, sealed_record(alice))
    stores = [store, await open_store()]
    # Some older than the stored document, some newer, in no particular order.
    expiries = [EXPIRY + timedelta(minutes=m) for m in (2, -3, 5, 0, 4, -1, 1, 3, -2)]
    records = [pulled_back(alice, expires_at=e) for e in expiries]
    await asyncio.gather(
        *(
            stores[i % 2].credentials.replace_if_newer(
                record, delivered_at=DELIVERED, newer_than=expiry
            )
            for i, (record, expiry) in enumerate(zip(records, expiries, strict=True))
        )
    )
    current = await store.credentials.get(alice, "codex")
    assert current is not None
    assert current.expires_at == max(expiries)
    assert current.nonce == records[expiries.index(max(expiries))].nonce


# --- reseal (used by master-key rotation) ------------------------------------------------------


async def test_reseal_swaps_the_sealed_bytes_of_an_unchanged_document(
    clocked_store: Store, clock: FakeClock, clocked_alice: str
) -> None:
    stored = await clocked_store.credentials.put(sealed_record(clocked_alice))
    clock.advance(5)
    nonce, ciphertext = secrets.token_bytes(12), secrets.token_bytes(200)
    resealed = await clocked_store.credentials.reseal(
        stored, key_id="feedfacecafebeef", nonce=nonce, ciphertext=ciphertext
    )
    assert resealed is not None
    assert (resealed.key_id, resealed.nonce, resealed.ciphertext) == (
        "feedfacecafebeef",
        nonce,
        ciphertext,
    )
    assert (resealed.sha256, resealed.updated_at) == (stored.sha256, stored.updated_at)


async def test_reseal_of_a_document_replaced_meanwhile_changes_nothing(
    store: Store, alice: str
) -> None:
    stale = await store.credentials.put(sealed_record(alice))
    replacement = await store.credentials.put(sealed_record(alice, key_id=stale.key_id))
    result = await store.credentials.reseal(
        stale, key_id="feedfacecafebeef", nonce=b"n" * 12, ciphertext=b"c" * 50
    )
    assert result is None
    assert await store.credentials.get(alice, "codex") == replacement


# --- the schema --------------------------------------------------------------------------------


def _credential_constraints(connection: Connection) -> tuple[dict[str, str], list[list[str]]]:
    inspector = inspect(connection)
    checks = {
        check["name"]: check["sqltext"]
        for check in inspector.get_check_constraints("credentials")
        if check["name"]
    }
    uniques = [u["column_names"] for u in inspector.get_unique_constraints("credentials")]
    return checks, uniques


async def test_the_provider_check_lists_exactly_the_agents_providers(store: Store) -> None:
    async with store.engine.connect() as conn:
        checks, uniques = await conn.run_sync(_credential_constraints)
    assert set(checks) == {"ck_credentials_provider", "ck_credentials_source"}
    assert set(re.findall(r"'([^']*)'", checks["ck_credentials_provider"])) == set(
        SUPPORTED_PROVIDERS
    )
    for source in CredentialSource:
        assert f"'{source.value}'" in checks["ck_credentials_source"]
    assert ["user_id", "provider"] in uniques


async def insert_raw(store: Store, **overrides: object) -> None:
    """Insert a credential row through raw SQL, bypassing the repository's checks."""
    now = datetime.now(UTC)
    row: dict[str, object] = {
        "id": f"cred_{secrets.token_hex(6)}",
        "user_id": "alice",
        "provider": "codex",
        "key_id": "0123456789abcdef",
        "nonce": b"n" * 12,
        "ciphertext": b"c" * 40,
        "sha256": "0" * 64,
        "source": "captured",
        "created_at": now,
        "updated_at": now,
    }
    row.update(overrides)
    names = ", ".join(row)
    params = ", ".join(f":{name}" for name in row)
    async with store.engine.begin() as conn:
        await conn.execute(text(f"INSERT INTO credentials ({names}) VALUES ({params})"), row)  # noqa: S608


async def test_the_database_accepts_every_agent_provider(store: Store, alice: str) -> None:
    for provider in SUPPORTED_PROVIDERS:
        await insert_raw(store, provider=provider)
    assert sorted(r.provider for r in await store.credentials.all()) == sorted(SUPPORTED_PROVIDERS)


@pytest.mark.parametrize(
    "overrides",
    [{"provider": "aider"}, {"provider": "CODEX"}, {"source": "imported"}],
    ids=["unknown-provider", "wrong-case-provider", "unknown-source"],
)
async def test_the_database_refuses_values_outside_its_checks(
    store: Store, alice: str, overrides: dict[str, object]
) -> None:
    with pytest.raises(IntegrityError):
        await insert_raw(store, **overrides)


async def test_the_database_refuses_a_second_row_for_a_user_and_provider(
    store: Store, alice: str
) -> None:
    await insert_raw(store)
    with pytest.raises(IntegrityError):
        await insert_raw(store)
