"""One controller per database: a lease a controller holds on its store for its whole life.

A controller takes its database for its own: at start it fails the rows of VMs whose process it
cannot find (``reconcile``), and it admits VMs against quotas it counts under a lock of its own
process. A second controller on the same database, on another state dir or host, would fail the
first one's running VMs and let a user past their limits, so it is refused at start instead.

On PostgreSQL the lease is a session-level advisory lock held on a connection of its own (the
server drops it when that connection ends, also when the controller is killed); on SQLite an
exclusive ``flock`` of ``<database file>.controller-lock`` (the kernel drops it likewise). The
CLI's local commands (``hearth keys``, ...) open the store without it and run beside a controller.

A PostgreSQL lease can be lost while its controller lives: the server restarts, fails over, or
ends the lease's session (``pg_terminate_backend``, an idle-session timeout). ``watch`` checks
every ``CHECK_INTERVAL_S`` that the lease's session still holds the lock, and takes it again on
a new connection when it does not; when another controller holds it by then, the lease is lost
for good (``controller_lease_lost``) and ``on_lost`` stops this controller. A database that
cannot be reached meanwhile is looked at again at the next check: while it is down nobody can
take the lock. A ``flock`` cannot be lost while its process lives: nothing is watched there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.errors import Conflict
from hearth.logging import get_logger
from hearth.state_dir_lock import lock_exclusively

_log = get_logger("store.controller_lease")
# A key unique to Hearth among the database's advisory locks ("HEARTHCT").
CONTROLLER_LEASE_KEY = 0x4845_4152_5448_4354
SQLITE_LEASE_SUFFIX = ".controller-lock"
# How often a PostgreSQL lease is checked, and how long one look at the database may take.
CHECK_INTERVAL_S = 10.0
CHECK_TIMEOUT_S = 5.0
_KEY = {"key": CONTROLLER_LEASE_KEY}
# The session holding the lease (advisory locks are per database; pg_locks shows a bigint key
# as its high and low halves).
_HOLDER = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND ((classid::bigint << 32) | objid::bigint) = :key "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _refused(where: str) -> Conflict:
    return Conflict(
        f"the database {where} is in use by another controller: stop it first (one controller "
        "per database; the CLI's local commands may run beside it)"
    )


class ControllerLease:
    """The lease of one store's database; ``take`` it, ``watch`` it, ``close`` lets it go."""

    def __init__(
        self,
        *,
        engine: AsyncEngine | None = None,
        conn: AsyncConnection | None = None,
        pid: int | None = None,
        fd: int | None = None,
    ) -> None:
        self._engine = engine
        self._conn = conn
        self._pid = pid  # the server process of the session that holds the lock
        self._fd = fd
        self._watching: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @classmethod
    async def take(cls, engine: AsyncEngine) -> ControllerLease:
        """Hold ``engine``'s database, without waiting: Conflict if another controller does."""
        shown = engine.url.render_as_string(hide_password=True)
        if engine.dialect.name == "postgresql":
            conn, pid = await _lock_on_new_connection(engine, shown)
            return cls(engine=engine, conn=conn, pid=pid)
        database = engine.url.database
        if not database or database == ":memory:":
            return cls()  # a database nobody else can open
        return cls._take_file(Path(database + SQLITE_LEASE_SUFFIX), shown)

    @classmethod
    def _take_file(cls, path: Path, shown: str) -> ControllerLease:
        fd, held = lock_exclusively(path, "the database's lease")
        if not held:
            os.close(fd)
            raise _refused(shown)
        return cls(fd=fd)

    def watch(self, on_lost: Callable[[], None], *, interval_s: float = CHECK_INTERVAL_S) -> None:
        """Check the lease every ``interval_s`` until ``close`` (a PostgreSQL lease; nothing
        else can be lost), and call ``on_lost`` once, and stop, when another controller holds
        the database."""
        if self._engine is None or self._watching is not None:
            return
        self._watching = asyncio.create_task(self._watch(on_lost, interval_s))

    async def _watch(self, on_lost: Callable[[], None], interval_s: float) -> None:
        # ``close`` ends the watch between two checks, never in one: a statement cut short by
        # a cancel would leave the lease's connection half-used.
        while not await _set_within(self._closing, interval_s):
            try:
                held = await self.check()
            except Exception:  # a bug must not end the watch: logged, and the next check runs
                _log.exception("controller_lease_check_crashed")
                continue
            if not held:
                on_lost()
                return

    async def check(self) -> bool:
        """Whether this controller still holds its database: its lease's session holds the
        lock, or the lock was free and is taken again on a new connection. False once another
        controller holds it (logged ``controller_lease_lost``); a database that cannot be
        reached, or a session of ours that has not ended yet, is looked at again next time."""
        if self._engine is None:
            return True  # a flock, or a database nobody else can open
        if self._conn is not None and await self._session_holds():
            return True
        try:
            await self._take_again()
        except Conflict as exc:
            _log.error(
                "controller_lease_lost",
                message="another controller holds the database now; this one stops",
                error=exc.message,
            )
            return False
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            _log.warning("controller_lease_unchecked", error=str(exc).splitlines()[0][:300])
        return True

    async def _session_holds(self) -> bool:
        """Whether the lease's session answers and holds the lock; a session that fails to
        answer is let go (its lock is gone with it, or goes when the server sees it end)."""
        assert self._conn is not None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                holder = await self._conn.scalar(_HOLDER, _KEY)
                await self._conn.commit()
        except TimeoutError:
            _log.warning("controller_lease_unchecked", error="the database did not answer")
            return True  # a session that hangs still holds its lock on the server
        except SQLAlchemyError as exc:
            _log.warning("controller_lease_session_lost", error=str(exc).splitlines()[0][:300])
            await self._let_session_go()
            return False
        if holder == self._pid:
            return True
        await self._let_session_go()
        return False

    async def _take_again(self) -> None:
        """The lock, taken again on a new connection. Conflict when another session holds it,
        unless that session is our own old one, not ended yet (then: looked at next time)."""
        assert self._engine is not None
        shown = self._engine.url.render_as_string(hide_password=True)
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            try:
                conn, pid = await _lock_on_new_connection(self._engine, shown)
            except Conflict:
                async with self._engine.connect() as look:
                    holder = await look.scalar(_HOLDER, _KEY)
                if holder is not None and holder == self._pid:
                    _log.warning("controller_lease_unchecked", error="its old session lingers")
                    return
                raise
        _log.warning("controller_lease_taken_again", old_pid=self._pid, pid=pid)
        self._conn, self._pid = conn, pid

    async def _let_session_go(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Stop watching and let the database go (again: nothing)."""
        self._closing.set()
        watching, self._watching = self._watching, None
        if watching is not None:
            await watching
        conn, self._conn = self._conn, None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # which drops the flock
        if conn is not None:
            try:
                with contextlib.suppress(Exception):  # a lost connection has dropped it already
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), _KEY)
                    await conn.commit()
            finally:
                await conn.close()


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def _lock_on_new_connection(engine: AsyncEngine, shown: str) -> tuple[AsyncConnection, int]:
    """A new connection of ``engine`` holding the lease's lock, and its session's server
    process; Conflict (naming ``shown``) when another session holds the lock."""
    conn = await engine.connect()
    try:
        row = (
            await conn.execute(text("SELECT pg_try_advisory_lock(:key), pg_backend_pid()"), _KEY)
        ).one()
        await conn.commit()  # the lock is the session's: it outlives the transaction
    except BaseException:
        await conn.close()
        raise
    held, pid = row
    if not held:
        await conn.close()
        raise _refused(shown)
    return conn, int(pid)
