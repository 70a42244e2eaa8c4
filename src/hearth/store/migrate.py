"""Schema upgrades: Alembic run in-process against the packaged ``migrations/`` directory."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.store.locks import Serialized, serialize_sync

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Execution option that makes the SQLite "begin" hook take the write lock up front.
SQLITE_BEGIN_IMMEDIATE = "hearth_sqlite_begin_immediate"
# Alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``),
# so two upgrades interleaving on one event loop would run against each other's context.
_UPGRADE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config built in code (no alembic.ini), bound to ``connection`` if given."""
    config = Config()
    # ConfigParser interpolates "%"; escape it in case the install path contains one.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def _upgrade_in_transaction(connection: Connection) -> None:
    # Held until the surrounding transaction ends, so a second opener waits, then finds the
    # schema at head and does nothing.
    serialize_sync(connection, Serialized.MIGRATION)
    command.upgrade(alembic_config(connection), "head")


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Apply every pending migration in one transaction (DDL is transactional on both backends).

    Upgrades are serialised within the process (Alembic's globals) and across processes (an
    advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite).
    """
    loop = asyncio.get_running_loop()
    lock = _UPGRADE_LOCKS.setdefault(loop, asyncio.Lock())
    locked = engine.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
    async with lock, locked.begin() as conn:
        await conn.run_sync(_upgrade_in_transaction)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)
