"""A controller's lease on its database while the controller runs: a PostgreSQL lease whose
session the server ended (``pg_terminate_backend``, as a restart or failover does) is taken
again, so a second controller is still refused; one that another controller took meanwhile is
lost, said as ``controller_lease_lost``, and the controller is told to stop (by default with
SIGTERM, as ``hearth serve`` stops on one). A SQLite ``flock`` cannot be lost: it is not watched.
Real PostgreSQL sessions, real advisory locks, real signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from hearth import runtime
from hearth.config import Settings
from hearth.errors import Conflict
from hearth.store import create_store_engine
from hearth.store.controller_lease import CONTROLLER_LEASE_KEY, ControllerLease
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import FakeImages

POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])
CHECK_S = 0.05  # the lease's check interval here
WAIT_S = 10.0
# The session holding an advisory lock on the connection's database, and those waiting for one.
LOCK_HOLDER = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
LOCK_WAITERS = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines on the test's database, as two controllers' stores would have."""
    first, second = create_store_engine(database_url), create_store_engine(database_url)
    yield first, second
    await first.dispose()
    await second.dispose()


async def lock_holder(engine: AsyncEngine) -> int | None:
    """The server process of the session that holds the lease, if any."""
    async with engine.connect() as conn:
        pid = await conn.scalar(LOCK_HOLDER)
    return None if pid is None else int(pid)


async def lock_waiters(engine: AsyncEngine) -> int:
    """How many sessions wait for the lease."""
    async with engine.connect() as conn:
        waiting = await conn.scalar(LOCK_WAITERS)
    return int(waiting or 0)


async def end_lease_session(engine: AsyncEngine) -> int:
    """End the lease's session on the server, as a restart does; its old server process."""
    pid = await lock_holder(engine)
    assert pid is not None, "nobody holds the lease"
    async with engine.connect() as conn:
        ended = await conn.scalar(
            text("SELECT pg_terminate_backend(:pid, :wait_ms)"),  # returns once it has ended
            {"pid": pid, "wait_ms": int(WAIT_S * 1000)},
        )
        await conn.commit()
    assert ended
    return pid


@asynccontextmanager
async def taken_over(engine: AsyncEngine) -> AsyncIterator[None]:
    """Another controller's session holds the lease for the block. It waits in the lock's queue
    before the lease's session is ended, so the lock is its own the moment that session is gone
    (a waiter is served before a later ``pg_try_advisory_lock``: the lease's own check)."""
    async with engine.connect() as conn:
        waiting = asyncio.create_task(
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": CONTROLLER_LEASE_KEY})
        )
        try:
            async with asyncio.timeout(WAIT_S):
                while not await lock_waiters(engine):
                    await asyncio.sleep(0.02)
            await end_lease_session(engine)
            await asyncio.wait_for(waiting, WAIT_S)
            await conn.commit()
            yield
        finally:
            if not waiting.done():
                waiting.cancel()
            await conn.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": CONTROLLER_LEASE_KEY}
            )
            await conn.commit()


@pytest.fixture
async def leased(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> AsyncIterator[tuple[ControllerLease, AsyncEngine]]:
    """A lease taken on the first engine (closed after the test), and the second engine."""
    first, second = engines
    lease = await ControllerLease.take(first)
    yield lease, second
    await lease.close()


@POSTGRESQL
async def test_a_lease_whose_session_was_ended_is_taken_again_and_others_still_refused(
    leased: tuple[ControllerLease, AsyncEngine],
) -> None:
    lease, second = leased
    lost: list[str] = []
    lease.watch(lambda: lost.append("lost"), interval_s=CHECK_S)
    old = await end_lease_session(second)
    async with asyncio.timeout(WAIT_S):
        while await lock_holder(second) in (None, old):
            await asyncio.sleep(0.02)
    with pytest.raises(Conflict, match="in use by another controller"):
        await ControllerLease.take(second)
    assert lost == []
    await lease.close()
    assert await lock_holder(second) is None, "close lets the lock taken again go"


@POSTGRESQL
async def test_a_lease_another_controller_took_meanwhile_is_lost_and_the_controller_told(
    leased: tuple[ControllerLease, AsyncEngine],
) -> None:
    lease, second = leased
    told = asyncio.Event()
    async with taken_over(second):  # in the window a lost session leaves
        with capture_logs() as logs:
            lease.watch(told.set, interval_s=CHECK_S)
            await asyncio.wait_for(told.wait(), WAIT_S)
        errors = [log["event"] for log in logs if log["log_level"] == "error"]
        assert errors == ["controller_lease_lost"]
        assert not await lease.check(), "still lost"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_sqlite_lease_is_not_watched_and_stays_held(
    leased: tuple[ControllerLease, AsyncEngine],
) -> None:
    lease, second = leased
    lease.watch(lambda: pytest.fail("a flock was called lost"), interval_s=CHECK_S)
    await asyncio.sleep(CHECK_S * 3)
    assert await lease.check()
    with pytest.raises(Conflict):
        await ControllerLease.take(second)


@POSTGRESQL
async def test_a_running_controller_whose_database_another_took_is_told_to_stop(
    api_settings: Settings, tmp_path: Path, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    _, second = engines
    stop = asyncio.Event()
    async with (
        runtime.open_hearth(
            api_settings,
            backend=FakeBackend(),
            images=FakeImages(tmp_path / "image"),
            on_lease_lost=stop.set,
            lease_check_interval_s=CHECK_S,
        ),
        taken_over(second),
    ):
        await asyncio.wait_for(stop.wait(), WAIT_S)


async def test_by_default_a_lost_lease_stops_this_process_as_sigterm_does() -> None:
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, asked.set)  # as ``hearth serve``'s server does
    try:
        runtime.stop_this_process()
        await asyncio.wait_for(asked.wait(), WAIT_S)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
