"""The store's schema and connection handling: migrations, CHECK constraints, URLs, lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, text
from sqlalchemy.exc import IntegrityError

from hearth.auth.states import TERMINAL, AuthStatus
from hearth.errors import ConfigError
from hearth.events.types import DeliveryStatus
from hearth.runs.states import RunStatus
from hearth.store import (
    Store,
    alembic_config,
    create_store_engine,
    current_revision,
    default_sqlite_url,
)
from hearth.store.database import normalise_url
from hearth.store.models import Base
from hearth.store.records import CredentialSource
from hearth.vm.types import BootMode, LifetimeAction, VmState, VmType
from hearth_agent.wire import Provider
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import TEST_KEY_SECRET, OpenStore, new_vm

HEAD = "0015"

# Every status-like column and the enum whose values it must hold.
ENUM_COLUMNS: list[tuple[str, str, type[StrEnum]]] = [
    ("vms", "status", VmState),
    ("vms", "vm_type", VmType),
    ("vms", "boot_mode", BootMode),
    ("vms", "timeout_action", LifetimeAction),
    ("vms", "idle_action", LifetimeAction),
    ("auth_sessions", "status", AuthStatus),
    ("runs", "status", RunStatus),
    ("webhook_deliveries", "status", DeliveryStatus),
]


def values_of(enum_cls: type[StrEnum]) -> frozenset[str]:
    """The plain string values of an enum, as a CHECK constraint lists them."""
    return frozenset(member.value for member in enum_cls)


# Every value list the migrations write out, and the values the code can write there today.
# Alembic's comparison with the models does not look inside CHECKs or index predicates; this does.
MIGRATED_VALUE_LISTS: dict[str, frozenset[str]] = {
    "ck_vms_status": values_of(VmState),
    "ck_vms_vm_type": values_of(VmType),
    "ck_vms_boot_mode": values_of(BootMode),
    "ck_vms_timeout_action": values_of(LifetimeAction),
    "ck_vms_idle_action": values_of(LifetimeAction),
    "ck_auth_sessions_status": values_of(AuthStatus),
    "ck_credentials_source": values_of(CredentialSource),
    "ck_credentials_provider": values_of(Provider),
    "ck_runs_status": values_of(RunStatus),
    "ck_runs_provider": values_of(Provider),
    "ck_webhook_deliveries_status": values_of(DeliveryStatus),
    "uq_auth_sessions_active_user_id_provider": frozenset(
        s.value for s in AuthStatus if s not in TERMINAL
    ),
}
_QUOTED = re.compile(r"'((?:[^']|'')*)'")


def schema_differences(connection: Connection, metadata: MetaData) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match ``metadata``."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def insert_raw_row(store: Store, table: str, column: str, value: str) -> None:
    """Insert a minimal row through raw SQL, with ``column`` set to ``value``."""
    now = datetime.now(UTC)
    row: dict[str, object]
    if table == "vms":
        row = {
            "id": f"vm-{value}",
            "user_id": "u1",
            "vm_type": "cli",
            "backend": "qemu",
            "status": "creating",
            "vcpus": 1,
            "mem_mib": 512,
            "created_at": now,
            "updated_at": now,
        }
    elif table == "runs":
        row = {
            "id": f"run-{value}",
            "user_id": "u1",
            "vm_id": "vm-1",
            "provider": "codex",
            "status": "starting",
            "timeout_s": 60,
            "created_at": now,
            "updated_at": now,
        }
    elif table == "webhook_deliveries":
        async with store.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO events (type, data, created_at) VALUES ('vm.ready', '{}', :t)"),
                {"t": now},
            )
            event_id = (await conn.execute(text("SELECT max(id) FROM events"))).scalar_one()
            await conn.execute(
                text(
                    "INSERT INTO webhooks (id, url, events, key_id, nonce, ciphertext, created_at)"
                    " VALUES (:id, 'http://127.0.0.1/', '[]', 'k', :b, :b, :t)"
                ),
                {"id": f"wh-{value}", "b": b"x", "t": now},
            )
        row = {
            "id": f"dl-{value}",
            "webhook_id": f"wh-{value}",
            "event_id": event_id,
            "status": "pending",
            "next_attempt_at": now,
            "give_up_at": now,
            "created_at": now,
            "updated_at": now,
        }
    else:
        row = {
            "id": f"as-{value}",
            "user_id": "u1",
            "provider": f"p-{value}",
            "status": "pending",
            "created_at": now,
            "updated_at": now,
        }
    row[column] = value
    names = ", ".join(row)
    params = ", ".join(f":{name}" for name in row)
    async with store.engine.begin() as conn:
        await conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({params})"), row)  # noqa: S608


# --- migrations --------------------------------------------------------------------------------


async def test_migrating_an_empty_database_yields_exactly_the_models_schema(
    empty_database_url: str,
) -> None:
    async with await Store.open(empty_database_url) as store:
        async with store.engine.connect() as conn:
            differences = await conn.run_sync(schema_differences, Base.metadata)
        assert differences == []
        assert await current_revision(store.engine) == HEAD


async def test_schema_comparison_notices_a_column_the_migrations_never_created(
    store: Store,
) -> None:
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["vms"].append_column(Column("gpu_count", Integer(), nullable=True))
    async with store.engine.connect() as conn:
        differences = await conn.run_sync(schema_differences, drifted)
    assert [(d[0], d[3].name) for d in differences] == [("add_column", "gpu_count")]


async def test_database_check_constraints_are_the_models_check_constraints(store: Store) -> None:
    def reflected(connection: Connection) -> dict[str, str]:
        inspector = inspect(connection)
        return {
            check["name"]: check["sqltext"]
            for table in ("vms", "auth_sessions", "runs", "webhook_deliveries")
            for check in inspector.get_check_constraints(table)
            if check["name"]
        }

    async with store.engine.connect() as conn:
        checks = await conn.run_sync(reflected)
    assert set(checks) == {"ck_vms_status", "ck_vms_vm_type", "ck_vms_boot_mode",
                           "ck_vms_timeout_action", "ck_vms_idle_action",
                           "ck_auth_sessions_status", "ck_runs_status",
                           "ck_runs_provider", "ck_webhook_deliveries_status"}  # fmt: skip
    for table, column, enum_cls in ENUM_COLUMNS:
        sqltext = checks[f"ck_{table}_{column}"]
        assert all(f"'{member.value}'" in sqltext for member in enum_cls), sqltext


async def test_the_latest_migration_allows_exactly_the_values_of_each_enum(store: Store) -> None:
    def value_lists(connection: Connection) -> dict[str, str]:
        inspector = inspect(connection)
        found: dict[str, str] = {}
        for table in inspector.get_table_names():
            for check in inspector.get_check_constraints(table):
                found[check["name"] or f"unnamed check on {table}"] = check["sqltext"]
            for index in inspector.get_indexes(table):
                options = index.get("dialect_options", {})
                where = options.get("sqlite_where", options.get("postgresql_where"))
                if where is not None:
                    found[str(index["name"])] = str(where)
        return found

    async with store.engine.connect() as conn:
        migrated = await conn.run_sync(value_lists)
    assert set(migrated) == set(MIGRATED_VALUE_LISTS)
    for name, sqltext in migrated.items():
        allowed = {value.replace("''", "'") for value in _QUOTED.findall(sqltext)}
        expected = MIGRATED_VALUE_LISTS[name]
        assert allowed == expected, (
            f"{name} allows {sorted(allowed)} but the code now writes {sorted(expected)}: an enum "
            "changed, so write a new migration in src/hearth/store/migrations/versions/ that "
            "alters it (with the values written out; never edit an earlier migration)"
        )


@pytest.mark.parametrize(("table", "column", "enum_cls"), ENUM_COLUMNS)
async def test_status_columns_accept_every_value_of_their_enum(
    store: Store, table: str, column: str, enum_cls: type[StrEnum]
) -> None:
    await store.users.ensure("u1")
    for member in enum_cls:
        await insert_raw_row(store, table, column, member.value)


@pytest.mark.parametrize(("table", "column", "enum_cls"), ENUM_COLUMNS)
async def test_status_columns_reject_a_value_outside_their_enum(
    store: Store, table: str, column: str, enum_cls: type[StrEnum]
) -> None:
    await store.users.ensure("u1")
    with pytest.raises(IntegrityError):
        await insert_raw_row(store, table, column, "not-a-member")


async def test_reopening_a_migrated_database_keeps_its_data_and_revision(
    open_store: OpenStore,
) -> None:
    first = await open_store()
    await first.users.ensure("alice")
    await first.close()
    second = await open_store()
    assert [u.id for u in await second.users.list()] == ["alice"]
    assert await current_revision(second.engine) == HEAD


async def test_stores_opening_one_fresh_database_at_once_all_succeed(
    empty_database_url: str,
) -> None:
    stores = await asyncio.gather(*(Store.open(empty_database_url) for _ in range(4)))
    try:
        for opened in stores:
            assert await current_revision(opened.engine) == HEAD
            assert await opened.ping()
    finally:
        for opened in stores:
            await opened.close()


async def test_timestamps_come_back_timezone_aware_in_utc(store: Store) -> None:
    await store.users.ensure("bob")
    local = datetime(2031, 5, 6, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    vm = await store.vms.insert(new_vm("bob", created_at=local, ready_at=local))
    for read in (vm, await store.vms.get(vm.id)):
        assert read.created_at == local
        assert read.ready_at == local
        assert read.created_at.tzinfo is UTC
        assert read.updated_at.tzinfo is UTC


# --- connections -------------------------------------------------------------------------------


async def test_ping_answers_true_on_a_live_database(store: Store) -> None:
    assert await store.ping() is True


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://hearth:wrong@127.0.0.1:1/nowhere",
        "sqlite:////nonexistent-dir/hearth.db",
    ],
)
async def test_ping_answers_false_when_the_database_cannot_be_reached(url: str) -> None:
    unreachable = Store(create_store_engine(url))
    try:
        assert await unreachable.ping(timeout_s=5) is False
    finally:
        await unreachable.close()
    # aiosqlite stops the worker thread of a failed connect without waiting for it; prove it
    # ends while this test's event loop is still there to hear from it.
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5)
            assert not thread.is_alive(), f"{thread.name} still running"


async def test_close_is_idempotent_and_async_with_closes(database_url: str) -> None:
    async with await Store.open(database_url) as opened:
        assert await opened.ping()
    await opened.close()
    await opened.close()


async def test_url_for_log_masks_the_password() -> None:
    store = Store(create_store_engine("postgresql://hearth:s3cret-pw@db.example:5432/hearth"))
    try:
        assert store.url_for_log() == "postgresql+psycopg://hearth:***@db.example:5432/hearth"
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("sqlite:////var/lib/hearth/hearth.db", "sqlite+aiosqlite:////var/lib/hearth/hearth.db"),
        ("sqlite+pysqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
        ("sqlite+aiosqlite:////x/h.db", "sqlite+aiosqlite:////x/h.db"),
        ("postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgres://u:p@h:6432/db", "postgresql+psycopg://u:p@h:6432/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ],
)
def test_plain_urls_are_normalised_to_the_async_drivers(given: str, normalised: str) -> None:
    assert normalise_url(given).render_as_string(hide_password=False) == normalised


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "mysql://u:p@h/db",
        "postgresql+asyncpg://u:p@h/db",
        "not a url",
    ],
)
def test_unsupported_or_in_memory_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        normalise_url(url)


def test_a_malformed_url_is_reported_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        normalise_url("postgresql://u:hunter2@h:notaport/db")
    assert "hunter2" not in str(caught.value)


async def test_default_sqlite_url_opens_hearth_db_in_the_state_dir(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path / "state")
    (tmp_path / "state").mkdir()
    async with await Store.open(url) as opened:
        await opened.users.ensure("alice")
    assert (tmp_path / "state" / "hearth.db").is_file()


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'hearth.db'}"
    async with await Store.open(url) as opened, opened.engine.connect() as conn:
        pragmas = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout")
        }
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}


async def test_upgrading_from_0002_drops_stored_view_links_and_keeps_old_keys_working(
    empty_database_url: str,
) -> None:
    database_url = empty_database_url
    old_key = "operator-chosen-admin-key-from-before-0003"
    engine = create_store_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0002"))
            at = datetime(2026, 1, 1, tzinfo=UTC)
            await conn.execute(
                text("INSERT INTO users (id, created_at) VALUES ('admin', :at)"), {"at": at}
            )
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, user_id, key_hash, prefix, is_admin, created_at)"
                    " VALUES ('key_old', 'admin', :hash, 'operator', true, :at)"
                ),
                {"hash": hashlib.sha256(old_key.encode()).hexdigest(), "at": at},
            )
            await conn.execute(
                text(
                    "INSERT INTO auth_sessions (id, user_id, provider, status, view_url,"
                    " view_token_hash, created_at, updated_at) VALUES ('auth-old', 'admin',"
                    " 'oidc', 'awaiting_user', '/view/auth-old?token=s3cret', 'h', :at, :at)"
                ),
                {"at": at},
            )
    finally:
        await engine.dispose()

    async with await Store.open(database_url, key_secret=TEST_KEY_SECRET) as store:
        async with store.engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("auth_sessions")}
            )
            dump = [tuple(row) for row in await conn.execute(text("SELECT * FROM auth_sessions"))]
        assert "view_url" not in columns
        assert "s3cret" not in str(dump)
        record = await store.api_keys.authenticate(old_key)
        assert record is not None
        assert record.id == "key_old"
        assert record.is_admin
