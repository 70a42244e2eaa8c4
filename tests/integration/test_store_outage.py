"""Which store errors a writer that must not lose its work waits out: real errors of SQLite and
PostgreSQL, raised through SQLAlchemy as the store raises them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from hearth.store.outage import is_outage
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import PostgresServer


def raised(run: object) -> DBAPIError:
    """What ``run()`` raised, which must be a DBAPIError."""
    with pytest.raises(DBAPIError) as caught:
        run()  # type: ignore[operator]
    return caught.value


def test_a_locked_sqlite_database_is_an_outage_and_a_missing_table_is_not(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.commit()
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.connect() as conn:
            locked = raised(lambda: conn.execute(text("INSERT INTO t VALUES (1)")))
        with engine.connect() as conn:
            missing = raised(lambda: conn.execute(text("SELECT * FROM no_such_table")))
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert "locked" in str(locked)
    assert is_outage(locked)
    assert "no such table" in str(missing)
    assert not is_outage(missing)


def test_an_unreachable_postgresql_is_an_outage_and_a_refused_statement_is_not(
    postgres_server: PostgresServer,
) -> None:
    unreachable = create_engine("postgresql+psycopg://hearth@127.0.0.1:1/hearth")
    try:
        refused_connect = raised(lambda: unreachable.connect())
    finally:
        unreachable.dispose()
    assert is_outage(refused_connect)

    engine = create_engine(postgres_server.admin_url)
    try:
        with engine.connect() as conn:
            bad = raised(lambda: conn.execute(text("SELECT * FROM no_such_table")))
    finally:
        engine.dispose()
    assert not is_outage(bad)
