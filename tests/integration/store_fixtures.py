"""Store fixtures: a fresh, really migrated database per test, on SQLite and on PostgreSQL.

Layered by lifecycle stage: ``postgres_server`` finds (or starts) the server once per session;
``empty_database_url`` is an empty database per test (a temp file, or ``CREATE DATABASE`` owned
by the hearth role), parametrized over both backends; ``database_url`` is a database already at
the latest revision, copied per test from one that ``Store.open`` migrated for real once per
session (SQLite's backup API, or PostgreSQL's ``CREATE DATABASE ... TEMPLATE``), so that a test
does not pay for every migration; ``store`` is a ``Store`` opened on it; ``open_store``
opens more stores on the same database, as other controller processes would. The tests of the
migrations themselves take ``empty_database_url``. Teardown closes every store, proves that no
PostgreSQL connection was left open, and drops the database.

PostgreSQL comes from ``HEARTH_TEST_DATABASE_URL``, else from ``scripts/postgres.sh``. When it
cannot be reached the PostgreSQL half is skipped with the reason, except under ``CI``, where it
fails: CI must run both backends.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import URL, make_url

from hearth.auth.states import AuthStatus
from hearth.store import AuthSessionRecord, Clock, Store, VmRecord, utc_now
from hearth.store.records import WebhookRecord
from hearth.vm.types import VmState, VmType

# The fixtures; test modules take them with ``from ... import *`` (pytest finds them by name).
# The session-scoped ones (postgres_server, migrated_templates) are taken by tests/conftest.py
# instead: imported into a module, a session fixture would be made again for each module.
__all__ = [
    "backend",
    "clock",
    "clocked_store",
    "database_url",
    "empty_database_url",
    "open_store",
    "store",
]

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ["sqlite", "postgresql"]
CONNECT_TIMEOUT_S = 5
SCRIPT_TIMEOUT_S = 600
CONNECTIONS_GONE_DEADLINE_S = 5.0
# What the test stores hash API keys under (a controller loads its own; see load_key_hash_secret).
TEST_KEY_SECRET = b"hearth-test-key-hash-secret-32b!"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so PostgreSQL tests must run)")
    pytest.skip(reason)


def _url_from_script() -> str:
    script = REPO / "scripts" / "postgres.sh"
    try:
        result = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"PostgreSQL not reachable at {script}: {exc}")
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        _unavailable(
            f"PostgreSQL not reachable at {script}: exit {result.returncode}: {' | '.join(tail)}"
        )
    return result.stdout.strip().splitlines()[-1]


def _conninfo(url: URL) -> str:
    """The URL as libpq understands it (no SQLAlchemy driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class PostgresServer:
    """A reachable PostgreSQL server and the role that may create test databases on it."""

    admin_url: URL

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            _conninfo(self.admin_url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )

    def create_database(self, template: str | None = None) -> URL:
        """A new database owned by the connecting role, empty or a copy of ``template``; its URL.

        A copy needs the template to have no session; an autovacuum worker visiting it for a
        moment is waited out, as in ``drop_database``.
        """
        name = f"hearth_t_{secrets.token_hex(6)}"
        owner = sql.Identifier(self.admin_url.username or "hearth")
        statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), owner)
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        deadline = time.monotonic() + CONNECTIONS_GONE_DEADLINE_S * 4
        while True:
            try:
                with self._admin() as conn:
                    conn.execute(statement)
                return self.admin_url.set(database=name)
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def connections_to(self, name: str) -> int:
        """How many sessions are connected to database ``name``."""
        with self._admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
        assert row is not None
        count = row[0]
        assert isinstance(count, int)
        return count

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting anyone still on it.

        An autovacuum worker (a superuser session the hearth role may not terminate) can visit
        a fresh database for a moment; the drop is retried until it has left.
        """
        deadline = time.monotonic() + CONNECTIONS_GONE_DEADLINE_S * 4
        while True:
            try:
                with self._admin() as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )
                return
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The PostgreSQL server of ``HEARTH_TEST_DATABASE_URL`` or ``scripts/postgres.sh``."""
    raw = os.environ.get("HEARTH_TEST_DATABASE_URL") or _url_from_script()
    url = make_url(raw)
    where = url.render_as_string(hide_password=True)
    try:
        psycopg.connect(_conninfo(url), connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        _unavailable(f"PostgreSQL not reachable at {where}: {exc}")
    return PostgresServer(admin_url=url.set(drivername="postgresql+psycopg"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test: ``sqlite`` or ``postgresql``."""
    name = request.param
    assert isinstance(name, str)
    return name


def _migrate(url: str) -> None:
    """``Store.open`` on ``url`` (which runs every migration), then close; in its own loop."""

    async def open_and_close() -> None:
        store = await Store.open(url, key_secret=TEST_KEY_SECRET)
        await store.close()

    # A thread of its own, so that no event loop of pytest-asyncio is running in it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, open_and_close()).result()


class MigratedTemplates:
    """One database per backend migrated to the latest revision, made on first use per session."""

    def __init__(self, root: Path, request: pytest.FixtureRequest) -> None:
        self._root = root
        self._request = request
        self._sqlite: Path | None = None
        self._postgres: tuple[PostgresServer, str] | None = None

    def sqlite(self) -> Path:
        """The migrated SQLite file."""
        if self._sqlite is None:
            path = self._root / "template.db"
            _migrate(f"sqlite+aiosqlite:///{path}")
            self._sqlite = path
        return self._sqlite

    def postgres(self) -> str:
        """The name of the migrated PostgreSQL database."""
        if self._postgres is None:
            server: PostgresServer = self._request.getfixturevalue("postgres_server")
            url = server.create_database()
            assert url.database is not None
            self._postgres = (server, url.database)
            _migrate(url.render_as_string(hide_password=False))
        return self._postgres[1]

    def drop(self) -> None:
        """Drop the PostgreSQL template, if one was made."""
        if self._postgres is not None:
            server, name = self._postgres
            server.drop_database(name)


@pytest.fixture(scope="session")
def migrated_templates(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[MigratedTemplates]:
    """The session's migrated template databases; the PostgreSQL one is dropped at the end."""
    templates = MigratedTemplates(tmp_path_factory.mktemp("db-templates"), request)
    yield templates
    templates.drop()


def _postgres_database(server: PostgresServer, template: str | None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of ``template`` if given), checked and dropped after."""
    url = server.create_database(template)
    name = url.database
    assert name is not None
    try:
        yield url.render_as_string(hide_password=False)
        # Every store is closed by now; a connection still open would be a leak.
        deadline = time.monotonic() + CONNECTIONS_GONE_DEADLINE_S
        while (left := server.connections_to(name)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == 0, f"{left} connection(s) to {name} left open after the test"
    finally:
        server.drop_database(name)


@pytest.fixture
def empty_database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The URL of a fresh, empty database of ``backend``; dropped after the test."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hearth-empty.db'}"
        return
    yield from _postgres_database(request.getfixturevalue("postgres_server"), None)


@pytest.fixture
def database_url(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    migrated_templates: MigratedTemplates,
) -> Iterator[str]:
    """The URL of a fresh database of ``backend`` at the latest revision; dropped after the test."""
    if backend == "sqlite":
        path = tmp_path / "hearth.db"
        with (
            closing(sqlite3.connect(migrated_templates.sqlite())) as source,
            closing(sqlite3.connect(path)) as copy,
        ):
            source.backup(copy)
        yield f"sqlite+aiosqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    yield from _postgres_database(server, migrated_templates.postgres())


OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture
async def open_store(database_url: str) -> AsyncIterator[OpenStore]:
    """Opens stores on the test's database (``await open_store(clock=...)``); closes them all."""
    opened: list[Store] = []

    async def open_one(*, clock: Clock = utc_now) -> Store:
        store = await Store.open(database_url, clock=clock, key_secret=TEST_KEY_SECRET)
        opened.append(store)
        return store

    yield open_one
    errors: list[BaseException] = []
    for store in reversed(opened):
        try:
            await store.close()
        except Exception as exc:  # collected: every store gets its close
            errors.append(exc)
    assert not errors, errors


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    """A store opened (and migrated) on a fresh database."""
    return await open_store()


class FakeClock:
    """A clock that stands still until told to move; repositories stamp times with it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds`` and return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at a fixed instant."""
    return FakeClock()


@pytest.fixture
async def clocked_store(open_store: OpenStore, clock: FakeClock) -> Store:
    """A store on a fresh database whose repositories read time from ``clock``."""
    return await open_store(clock=clock)


def new_vm(user_id: str, **overrides: object) -> VmRecord:
    """A VM record for ``user_id`` with a unique id; ``overrides`` replace any field."""
    values: dict[str, object] = {
        "id": f"vm-{secrets.token_hex(6)}",
        "user_id": user_id,
        "vm_type": VmType.CLI,
        "backend": "qemu",
        "status": VmState.CREATING,
        "vcpus": 1,
        "mem_mib": 512,
    }
    values.update(overrides)
    return VmRecord(**values)  # type: ignore[arg-type]


def new_auth_session(user_id: str, **overrides: object) -> AuthSessionRecord:
    """An auth session record for ``user_id`` with a unique id; ``overrides`` replace any field."""
    values: dict[str, object] = {
        "id": f"as-{secrets.token_hex(6)}",
        "user_id": user_id,
        "provider": "claude_code",
        "status": AuthStatus.PENDING,
    }
    values.update(overrides)
    return AuthSessionRecord(**values)  # type: ignore[arg-type]


def new_webhook(**overrides: object) -> WebhookRecord:
    """A webhook record for ``vm.ready`` with a stand-in sealed secret; ``overrides`` replace
    any field."""
    values: dict[str, object] = {
        "url": "https://hooks.test/in",
        "events": ("vm.ready",),
        "key_id": "k",
        "nonce": b"n" * 12,
        "ciphertext": b"c",
    }
    values.update(overrides)
    return WebhookRecord(**values)  # type: ignore[arg-type]
