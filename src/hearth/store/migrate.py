"""Schema upgrades: Alembic run in-process against the packaged ``migrations/`` directory."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.errors import ConfigError
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


def _refuse_unknown_revision(connection: Connection) -> None:
    # Alembic would fail on such a database only once it plans the upgrade, with its own
    # CommandError; ids are compared whole, where Alembic would take a prefix for an id.
    script = ScriptDirectory.from_config(alembic_config())
    known = {revision.revision for revision in script.walk_revisions()}
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        newest = ", ".join(repr(head) for head in script.get_heads())
        raise ConfigError(
            f"it is at schema revision {', '.join(map(repr, unknown))}, which this Hearth does "
            f"not know (its newest is {newest}): it was likely written by a newer Hearth, and "
            "downgrading is not supported; upgrade Hearth or restore a backup. Nothing in the "
            "database was changed"
        )


def _upgrade_in_transaction(connection: Connection) -> None:
    # Held until the surrounding transaction ends, so a second opener waits, then finds the
    # schema at head and does nothing.
    serialize_sync(connection, Serialized.MIGRATION)
    _refuse_unknown_revision(connection)
    command.upgrade(alembic_config(connection), "head")


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Apply every pending migration in one transaction (DDL is transactional on both backends).

    A database at a revision this Hearth does not know (written by a newer one) is refused
    with ConfigError, unchanged. Upgrades are serialised within the process (Alembic's
    globals) and across processes (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on
    SQLite).
    """
    loop = asyncio.get_running_loop()
    lock = _UPGRADE_LOCKS.setdefault(loop, asyncio.Lock())
    locked = engine.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
    async with lock, locked.begin() as conn:
        await conn.run_sync(_upgrade_in_transaction)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def check_revision_known(engine: AsyncEngine) -> None:
    """ConfigError if the database is at a revision this Hearth does not know (written by a
    newer one); nothing is migrated or written."""
    async with engine.connect() as conn:
        await conn.run_sync(_refuse_unknown_revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)
