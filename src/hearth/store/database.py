"""The store: one async engine (SQLite or PostgreSQL), migrated on open, with its repositories."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from psycopg.conninfo import timeout_from_conninfo
from psycopg.errors import ConnectionTimeout
from sqlalchemy import URL, Connection, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hearth.closing import Closing
from hearth.config import SQLITE_FILE_NAME
from hearth.errors import ConfigError
from hearth.logging import get_logger
from hearth.store.migrate import SQLITE_BEGIN_IMMEDIATE, upgrade_to_head
from hearth.store.records import utc_now
from hearth.store.repositories import (
    ApiKeyRepo,
    AuthSessionRepo,
    Clock,
    CredentialRepo,
    EgressRepo,
    EventRepo,
    RunRepo,
    SealedRepo,
    UserRepo,
    VmRepo,
    WebhookRepo,
    WorkspaceRepo,
)

SQLITE_BUSY_TIMEOUT_MS = 5000
PING_TIMEOUT_S = 5.0
# How long a new PostgreSQL connection (TCP and PostgreSQL's handshake) may take before it fails,
# unless the URL sets ``connect_timeout`` (or PGCONNECT_TIMEOUT is set): a host that drops
# packets would otherwise hold the controller's start, and every new pooled connection, for
# psycopg's default of 130 s. libpq counts whole seconds, 2 at least.
POSTGRES_CONNECT_TIMEOUT_S = 10
_CONNECT_TIMEOUT = "connect_timeout"
# libpq's variable, which psycopg reads too: an operator's bound when the URL sets none.
_CONNECT_TIMEOUT_ENV = "PGCONNECT_TIMEOUT"
# An open PostgreSQL connection whose server goes silent (its packets dropped: a failover, a
# firewall, a host gone) fails within seconds instead of TCP's 15 minutes of retransmits, or for
# ever while it waits on an answer: libpq's ``tcp_user_timeout`` bounds how long what it sent may
# go unacknowledged, its keepalives how long an awaited answer may be silent (5 + 3 * 2 s). Each
# is the URL's own where it sets one (libpq's names).
POSTGRES_LIVENESS: dict[str, int] = {
    "tcp_user_timeout": 15_000,  # ms
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}

_log = get_logger("store")

_SQLITE_DRIVERS = {"sqlite": "sqlite+aiosqlite", "sqlite+pysqlite": "sqlite+aiosqlite"}
_POSTGRES_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_ASYNC_DRIVERS = {"sqlite+aiosqlite", "postgresql+psycopg"}


def default_sqlite_url(state_dir: Path) -> str:
    """The URL of the SQLite database Hearth uses by default: ``hearth.db`` in the state dir."""
    return f"sqlite+aiosqlite:///{state_dir / SQLITE_FILE_NAME}"


def normalise_url(url: str) -> URL:
    """Parse a database URL and point it at the async driver (aiosqlite or psycopg).

    Raises ConfigError for anything but a SQLite file or a PostgreSQL database.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The message would echo the URL, password included.
        raise ConfigError("the database URL cannot be parsed") from None
    name = parsed.drivername
    name = _SQLITE_DRIVERS.get(name) or _POSTGRES_DRIVERS.get(name) or name
    if name not in _ASYNC_DRIVERS:
        raise ConfigError(
            f"unsupported database driver {parsed.drivername!r}: use sqlite:///<file> "
            "or postgresql://user:password@host/db"
        )
    parsed = parsed.set(drivername=name)
    if parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    ):
        raise ConfigError("an in-memory SQLite database is not supported; give a file path")
    return parsed


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (see the "begin" hook below); the driver's
        # legacy mode never emits BEGIN before SELECT or DDL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # WAL is a property of the file; switching needs exclusive access, so only the first
        # connection to a new database does it.
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(SQLITE_BEGIN_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_store_engine(
    url: str, *, connect_timeout_s: int = POSTGRES_CONNECT_TIMEOUT_S
) -> AsyncEngine:
    """An async engine for ``url`` with the per-backend settings the store relies on.

    A new PostgreSQL connection fails after ``connect_timeout_s`` (the URL's own
    ``connect_timeout`` wins, then ``PGCONNECT_TIMEOUT``); ``connect_timed_out`` tells that
    failure apart. An open one whose server goes silent fails too (``POSTGRES_LIVENESS``).
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed)
        _tune_sqlite(engine)
        return engine
    # ``connect_args`` would override the URL's values: only what the operator left unset.
    connect_args: dict[str, int] = {
        name: value for name, value in POSTGRES_LIVENESS.items() if name not in parsed.query
    }
    if not _operators_timeout(parsed):
        connect_args[_CONNECT_TIMEOUT] = connect_timeout_s
    return create_async_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def _operators_timeout(parsed: URL) -> str | None:
    """The connect timeout the operator set: the URL's ``connect_timeout``, else
    ``PGCONNECT_TIMEOUT``; None when neither is (the store's default applies)."""
    given = parsed.query.get(_CONNECT_TIMEOUT) or os.environ.get(_CONNECT_TIMEOUT_ENV)
    return given if isinstance(given, str) and given else None


def connect_timeout_s(url: str) -> int | None:
    """How many seconds a new connection of ``create_store_engine(url)`` may take, as the driver
    counts them (None for SQLite, which opens a file)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    return timeout_from_conninfo(
        {_CONNECT_TIMEOUT: _operators_timeout(parsed) or POSTGRES_CONNECT_TIMEOUT_S}
    )


def connect_timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a new connection that got no answer in its time."""
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, ConnectionTimeout)


class Store(Closing):
    """Hearth's persistent state: users, API keys, VMs, auth sessions, credentials, runs, the
    CLI VMs' egress paths, the users' workspace volumes, and the event log with the webhooks it
    feeds.

    Open with ``await Store.open(url)`` (which migrates the schema to head), close with
    ``await store.close()`` or use ``async with``. Constructing one directly takes an engine
    from ``create_store_engine`` and does not migrate.
    """

    def __init__(
        self, engine: AsyncEngine, *, clock: Clock = utc_now, key_secret: bytes | None = None
    ) -> None:
        self.engine = engine
        self.users = UserRepo(engine, clock=clock)
        self.api_keys = ApiKeyRepo(engine, clock=clock, secret=key_secret)
        self.vms = VmRepo(engine, clock=clock)
        self.auth_sessions = AuthSessionRepo(engine, clock=clock)
        self.credentials = CredentialRepo(engine, clock=clock)
        self.runs = RunRepo(engine, clock=clock)
        self.egress = EgressRepo(engine, clock=clock)
        self.events = EventRepo(engine, clock=clock)
        self.webhooks = WebhookRepo(engine, clock=clock)
        self.workspaces = WorkspaceRepo(engine, clock=clock)
        self.sealed = SealedRepo(engine, clock=clock)

    @classmethod
    async def open(
        cls, url: str, *, clock: Clock = utc_now, key_secret: bytes | None = None
    ) -> Store:
        """Connect to ``url`` and bring its schema to the newest revision (ConfigError, the
        database unchanged, if it is at a revision this Hearth does not know).

        ``key_secret`` is what API keys are hashed under (``load_key_hash_secret``); without it
        keys can be listed and revoked but not minted or checked.
        """
        engine = create_store_engine(url)
        try:
            await upgrade_to_head(engine)
        except ConfigError as exc:  # at a revision this Hearth does not know: say which database
            await engine.dispose()
            shown = engine.url.render_as_string(hide_password=True)
            raise ConfigError(f"cannot open the database {shown}: {exc.message}") from exc
        except BaseException:
            await engine.dispose()
            raise
        store = cls(engine, clock=clock, key_secret=key_secret)
        _log.info("store_opened", url=store.url_for_log())
        return store

    async def close(self) -> None:
        """Close every pooled connection; safe to call more than once."""
        await self.engine.dispose()

    async def ping(self, *, timeout_s: float = PING_TIMEOUT_S) -> bool:
        """Whether the database answers a trivial query within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            _log.warning("store_ping_failed", url=self.url_for_log(), error=str(exc))
            return False
        return True

    def url_for_log(self) -> str:
        """The database URL with its password masked."""
        return self.engine.url.render_as_string(hide_password=True)
