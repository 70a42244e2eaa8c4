"""Store fixtures: a fresh, really migrated database per test, on SQLite and on PostgreSQL.

Layered by lifecycle stage: ``postgres_server`` finds (or starts) the server once per session;
``database_url`` is an empty database per test (a temp file, or ``CREATE DATABASE`` owned by
the hearth role), parametrized over both backends; ``store`` is a ``Store`` opened on it, which
runs the Alembic migrations for real; ``open_store`` opens more stores on the same database, as
other controller processes would. Teardown closes every store, proves that no PostgreSQL
connection was left open, and drops the database.

PostgreSQL comes from ``HEARTH_TEST_DATABASE_URL``, else from ``scripts/postgres.sh``. When it
cannot be reached the PostgreSQL half is skipped with the reason, except under ``CI``, where it
fails: CI must run both backends.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from hearth.vm.types import VmState, VmType

# The fixtures; test modules take them with ``from ... import *`` (pytest finds them by name).
__all__ = [
    "backend",
    "clock",
    "clocked_store",
    "database_url",
    "open_store",
    "postgres_server",
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

    def create_database(self) -> URL:
        """A new empty database owned by the connecting role; its URL."""
        name = f"hearth_t_{secrets.token_hex(6)}"
        owner = self.admin_url.username or "hearth"
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
        return self.admin_url.set(database=name)

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


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database of ``backend``; dropped after the test."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hearth.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
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
