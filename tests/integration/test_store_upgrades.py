"""Upgrading a database that holds data, on SQLite and PostgreSQL: from every earlier revision,
opening the store reaches head with every row and every link between rows kept, and the schema
a fresh install has. SQLite rebuilds a table to alter it, inside one transaction with foreign
keys on, so rows that refer to a rebuilt table (a VM's egress path) are what can break it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text

from hearth.store import Store, alembic_config, create_store_engine, current_revision
from hearth.store.models import Base
from hearth_agent.wire import Provider
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import TEST_KEY_SECRET, MigratedTemplates
from tests.integration.test_store_schema import HEAD, schema_differences

AT = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)
EARLIER = [f"{n:04d}" for n in range(1, int(HEAD))]
# What an upgrade drops on purpose, by the revision that drops it.
DROPPED = {"0003": {("auth_sessions", "view_url")}}

# A little of everything, each row in the table's columns as first created (later columns are
# nullable or have defaults), in an order that inserts what is referred to first: (the revision
# that created the table, table, row).
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("0001", "users", {"id": "ann", "created_at": AT}),
    ("0001", "users", {"id": "bob", "created_at": AT}),
    ("0001", "api_keys", {"id": "key-ann", "user_id": "ann", "key_hash": "a" * 64,
                          "prefix": "hk_ann", "is_admin": True, "created_at": AT}),
    ("0001", "vms", {"id": "vm-cli", "user_id": "ann", "vm_type": "cli", "backend": "qemu",
                     "status": "ready", "agent_url": "http://127.0.0.1:40001", "host_port": 40001,
                     "token_hash": "t" * 64, "boot_mode": "restore", "vcpus": 2, "mem_mib": 1024,
                     "created_at": AT, "ready_at": AT, "updated_at": AT}),
    ("0001", "vms", {"id": "vm-browser", "user_id": "bob", "vm_type": "browser",
                     "backend": "qemu", "status": "paused", "vcpus": 2, "mem_mib": 2048,
                     "created_at": AT, "updated_at": AT}),
    ("0001", "auth_sessions", {"id": "as-1", "user_id": "ann", "provider": "claude_code",
                               "status": "awaiting_user", "vm_id": "vm-cli",
                               "browser_vm_id": "vm-browser", "view_token_hash": "v" * 64,
                               "created_at": AT, "updated_at": AT}),
    ("0002", "credentials", {"id": "cred-1", "user_id": "ann", "provider": "claude_code",
                             "key_id": "k1", "nonce": b"n" * 12, "ciphertext": b"sealed",
                             "sha256": "s" * 64, "source": "captured",
                             "delivered_to_vm_id": "vm-cli", "delivered_at": AT,
                             "created_at": AT, "updated_at": AT}),
    ("0004", "runs", {"id": "run-1", "user_id": "ann", "vm_id": "vm-cli", "provider": "codex",
                      "status": "running", "timeout_s": 600, "created_at": AT, "updated_at": AT}),
    ("0004", "run_events", {"run_id": "run-1", "seq": 1, "type": "stdout", "data": '"hi"',
                            "created_at": AT}),
    ("0005", "vm_egress", {"vm_id": "vm-cli", "port": 41001, "providers": '["claude_code"]',
                           "allow_out": '["pypi.org"]', "deny_out": "[]", "updated_at": AT}),
    ("0005", "vm_egress", {"vm_id": "vm-browser", "port": 41002, "providers": "[]",
                           "allow_out": "[]", "deny_out": '["example.com"]', "updated_at": AT}),
    # Numbered by the database, as the product's events are: this one is event 1.
    ("0006", "events", {"type": "vm.ready", "user_id": "ann", "vm_id": "vm-cli", "data": "{}",
                        "created_at": AT}),
    ("0006", "webhooks", {"id": "wh-1", "url": "http://127.0.0.1/hook", "events": '["vm.ready"]',
                          "key_id": "k1", "nonce": b"n" * 12, "ciphertext": b"c",
                          "created_at": AT}),
    ("0006", "webhook_deliveries", {"id": "dl-1", "webhook_id": "wh-1", "event_id": 1,
                                    "status": "pending", "next_attempt_at": AT,
                                    "give_up_at": AT, "created_at": AT, "updated_at": AT}),
    ("0006", "webhook_attempts", {"delivery_id": "dl-1", "n": 1, "at": AT, "status_code": 500,
                                  "duration_ms": 12}),
    ("0013", "workspaces", {"id": "ws-1", "user_id": "ann", "size_mib": 1024,
                            "vm_id": "vm-cli", "created_at": AT}),
]  # fmt: skip

Columns = dict[str, set[str]]
Snapshot = dict[str, list[dict[str, Any]]]


def insert_rows(connection: Connection, revision: str) -> None:
    """Insert every row of ``ROWS`` whose table exists at ``revision``."""
    for created, table, row in ROWS:
        if created <= revision:
            names = ", ".join(row)
            params = ", ".join(f":{name}" for name in row)
            connection.execute(text(f"INSERT INTO {table} ({names}) VALUES ({params})"), row)  # noqa: S608


def table_columns(connection: Connection) -> Columns:
    """Each table's columns (Alembic's bookkeeping left out)."""
    inspector = inspect(connection)
    return {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }


def snapshot(connection: Connection, columns: Columns) -> Snapshot:
    """Every row of ``columns``' tables, in those columns, in a fixed order."""
    taken: Snapshot = {}
    for table, names in columns.items():
        listed = ", ".join(sorted(names))
        rows = connection.execute(text(f"SELECT {listed} FROM {table}"))  # noqa: S608
        taken[table] = in_order(dict(row._mapping) for row in rows)
    return taken


def in_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` in an order that depends on their values alone."""
    return sorted(rows, key=lambda row: repr(sorted(row.items())))


def sqlite_schema(connection: Connection) -> list[tuple[str, str, list[str]]]:
    """SQLite's DDL, each statement's constraint lines sorted (batch mode writes them in no
    fixed order)."""
    statements = connection.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE name != 'alembic_version' ORDER BY name"
    )
    schema = []
    for kind, name, sql in statements:
        lines = [line.strip().rstrip(",") for line in (sql or "").splitlines()]
        constraints = sorted(line for line in lines if line.startswith("CONSTRAINT"))
        others = [line for line in lines if not line.startswith("CONSTRAINT")]
        schema.append((kind, name, others + constraints))
    return schema


async def migrate_with_rows(url: str, revision: str) -> tuple[Columns, Snapshot]:
    """Migrate ``url`` to ``revision`` as the store does (one transaction, foreign keys on) and
    insert ``ROWS``; the tables' columns and rows then."""
    engine = create_store_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
            await conn.run_sync(insert_rows, revision)
            columns = await conn.run_sync(table_columns)
            return columns, await conn.run_sync(snapshot, columns)
    finally:
        await engine.dispose()


async def read_schema(url: str) -> list[tuple[str, str, list[str]]]:
    """The normalised DDL of the SQLite database at ``url``."""
    engine = create_store_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(sqlite_schema)
    finally:
        await engine.dispose()


def project(rows: Snapshot, columns: Columns) -> Snapshot:
    """``rows`` of ``columns``' tables, in those columns only."""
    return {
        table: in_order({c: row[c] for c in names} for row in rows[table])
        for table, names in columns.items()
    }


async def assert_links_intact(store: Store, *, with_egress: bool) -> None:
    """No row refers to a missing one, and the product reads a VM (and its egress path) back."""
    async with store.engine.connect() as conn:
        assert await conn.run_sync(dangling_rows) == []
    assert (await store.vms.get("vm-cli")).user_id == "ann"
    if with_egress:
        egress = await store.egress.get("vm-cli")
        assert egress is not None
        assert (egress.port, egress.providers) == (41001, frozenset({Provider.CLAUDE_CODE}))


def dangling_rows(connection: Connection) -> list[Any]:
    """SQLite's list of rows whose foreign key finds nothing (PostgreSQL never keeps one)."""
    if connection.dialect.name != "sqlite":
        return []
    return list(connection.exec_driver_sql("PRAGMA foreign_key_check").all())


@pytest.mark.parametrize("start", EARLIER)
async def test_upgrading_a_database_with_rows_keeps_them_linked_and_ends_as_a_fresh_install(
    empty_database_url: str, migrated_templates: MigratedTemplates, start: str
) -> None:
    columns, before = await migrate_with_rows(empty_database_url, start)
    assert all(before.values()), "every table holds rows before the upgrade"
    dropped = {pair for rev, pairs in DROPPED.items() if start < rev for pair in pairs}
    kept = {
        table: names - {c for t, c in dropped if t == table} for table, names in columns.items()
    }

    async with await Store.open(empty_database_url, key_secret=TEST_KEY_SECRET) as store:
        assert await current_revision(store.engine) == HEAD
        async with store.engine.connect() as conn:
            assert await conn.run_sync(snapshot, kept) == project(before, kept)
            assert await conn.run_sync(schema_differences, Base.metadata) == []
        await assert_links_intact(store, with_egress="vm_egress" in before)
        sqlite = store.engine.dialect.name == "sqlite"

    if sqlite:
        fresh = f"sqlite:///{migrated_templates.sqlite()}"
        assert await read_schema(empty_database_url) == await read_schema(fresh)


async def test_downgrading_to_0006_keeps_the_rows_of_every_table_it_keeps(
    database_url: str,
) -> None:
    engine = create_store_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(insert_rows, HEAD)
            before = await conn.run_sync(snapshot, await conn.run_sync(table_columns))
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0006"))
        async with engine.connect() as conn:
            columns = await conn.run_sync(table_columns)
            assert "vm_egress" in columns
            assert await conn.run_sync(snapshot, columns) == project(before, columns)
            assert await conn.run_sync(dangling_rows) == []
    finally:
        await engine.dispose()
