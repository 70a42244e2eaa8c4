"""Writers that must run one at a time: PostgreSQL advisory locks, every key in one table.

On SQLite every writing transaction already takes the database's write lock at ``BEGIN``
(``BEGIN IMMEDIATE``), so writers never overlap and nothing more is taken there. On PostgreSQL
writers run side by side; a transaction that must not overlap another of its kind takes its
kind's transaction-level advisory lock as its first statement, and holds it until it ends.
"""

from __future__ import annotations

from enum import IntEnum

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

_TAKE = text("SELECT pg_advisory_xact_lock(:key)")


class Serialized(IntEnum):
    """The kinds of transaction that run one at a time (each value a key unique to Hearth)."""

    # Schema upgrades: a second opener waits, then finds the schema at head.
    MIGRATION = 0x4845_4152_5448  # "HEARTH"
    # Event appends: an event's id is drawn at its INSERT but seen at its COMMIT, and readers
    # move their cursor past the newest id they saw; ids must become visible in order.
    EVENT_APPEND = 0x4845_4152_5448_4556  # "HEARTHEV"
    # Webhook creates: the count of webhooks and the insert that must keep it under the cap.
    WEBHOOK_CREATE = 0x4845_4152_5448_5748  # "HEARTHWH"


async def serialize(conn: AsyncConnection, kind: Serialized) -> None:
    """Wait until no other transaction of ``kind`` runs, and keep others waiting until this
    one's transaction ends (PostgreSQL; SQLite's writers are serialized already)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(_TAKE, {"key": int(kind)})


def serialize_sync(conn: Connection, kind: Serialized) -> None:
    """``serialize`` on a synchronous connection (Alembic's)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_TAKE, {"key": int(kind)})
