"""A scratch PostgreSQL database for a benchmark: created empty, dropped at the end.

The bench never writes into the database it is pointed at; it only uses that connection to
``CREATE DATABASE`` a scratch one (the role needs CREATEDB) and to drop it afterwards.
"""

from __future__ import annotations

import asyncio
import secrets

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import URL

from hearth.bench.errors import BenchError
from hearth.store import normalise_url

CONNECT_TIMEOUT_S = 10


class ScratchDatabase:
    """An empty database on the server of ``server_url``; ``create`` it, ``drop`` it after."""

    def __init__(self, server_url: str) -> None:
        url = normalise_url(server_url)
        if url.get_backend_name() != "postgresql":
            raise BenchError("the bench's --database-url must be a PostgreSQL URL")
        self.server = url
        self.name = f"hearth_bench_{secrets.token_hex(4)}"
        self.version = "unknown"
        self._attempted = False

    @property
    def url(self) -> str:
        """The scratch database's URL (password included: it goes to the controller's env)."""
        return self.server.set(database=self.name).render_as_string(hide_password=False)

    @property
    def where(self) -> str:
        """The server, for messages (no password)."""
        return self.server.render_as_string(hide_password=True)

    async def create(self) -> None:
        """Create the scratch database (and note the server's version)."""
        self._attempted = True
        await asyncio.to_thread(self._create)

    async def drop(self) -> None:
        """Drop the scratch database if a create was attempted, disconnecting anyone on it."""
        if self._attempted:
            await asyncio.to_thread(self._drop)
            self._attempted = False

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(
                _conninfo(self.server), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL at {self.where} is not reachable: {exc}") from exc

    def _create(self) -> None:
        with self._connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "unknown"
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            except psycopg.Error as exc:
                raise BenchError(
                    f"cannot create a scratch database on {self.where} (the role needs "
                    f"CREATEDB): {exc}"
                ) from exc

    def _drop(self) -> None:
        with self._connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


def _conninfo(url: URL) -> str:
    return make_conninfo(
        "",
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
    )
