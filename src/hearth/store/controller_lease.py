"""One controller per database: a lease a controller holds on its store for its whole life.

A controller takes its database for its own: at start it fails the rows of VMs whose process it
cannot find (``reconcile``), and it admits VMs against quotas it counts under a lock of its own
process. A second controller on the same database, on another state dir or host, would fail the
first one's running VMs and let a user past their limits, so it is refused at start instead.

On PostgreSQL the lease is a session-level advisory lock held on a connection of its own (the
server drops it when that connection ends, also when the controller is killed); on SQLite an
exclusive ``flock`` of ``<database file>.controller-lock`` (the kernel drops it likewise). The
CLI's local commands (``hearth keys``, ...) open the store without it and run beside a controller.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.errors import Conflict
from hearth.state_dir_lock import lock_exclusively

# A key unique to Hearth among the database's advisory locks ("HEARTHCT").
CONTROLLER_LEASE_KEY = 0x4845_4152_5448_4354
SQLITE_LEASE_SUFFIX = ".controller-lock"


def _refused(where: str) -> Conflict:
    return Conflict(
        f"the database {where} is in use by another controller: stop it first (one controller "
        "per database; the CLI's local commands may run beside it)"
    )


class ControllerLease:
    """The lease of one store's database; ``take`` it, ``close`` lets it go."""

    def __init__(self, *, conn: AsyncConnection | None = None, fd: int | None = None) -> None:
        self._conn = conn
        self._fd = fd

    @classmethod
    async def take(cls, engine: AsyncEngine) -> ControllerLease:
        """Hold ``engine``'s database, without waiting: Conflict if another controller does."""
        shown = engine.url.render_as_string(hide_password=True)
        if engine.dialect.name == "postgresql":
            return await cls._take_postgresql(engine, shown)
        database = engine.url.database
        if not database or database == ":memory:":
            return cls()  # a database nobody else can open
        return cls._take_file(Path(database + SQLITE_LEASE_SUFFIX), shown)

    @classmethod
    async def _take_postgresql(cls, engine: AsyncEngine, shown: str) -> ControllerLease:
        conn = await engine.connect()
        try:
            held = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": CONTROLLER_LEASE_KEY}
            )
            await conn.commit()  # the lock is the session's: it outlives the transaction
        except BaseException:
            await conn.close()
            raise
        if not held:
            await conn.close()
            raise _refused(shown)
        return cls(conn=conn)

    @classmethod
    def _take_file(cls, path: Path, shown: str) -> ControllerLease:
        fd, held = lock_exclusively(path, "the database's lease")
        if not held:
            os.close(fd)
            raise _refused(shown)
        return cls(fd=fd)

    async def close(self) -> None:
        """Let the database go (again: nothing)."""
        conn, self._conn = self._conn, None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # which drops the flock
        if conn is not None:
            try:
                with contextlib.suppress(Exception):  # a lost connection has dropped it already
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": CONTROLLER_LEASE_KEY}
                    )
                    await conn.commit()
            finally:
                await conn.close()
