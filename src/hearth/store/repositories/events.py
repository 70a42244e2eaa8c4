"""The event log: appended with the deliveries it owes the webhooks, in one transaction."""

from __future__ import annotations

import builtins
import json
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, select

from hearth.events.types import DeliveryStatus
from hearth.store.locks import Serialized, serialize
from hearth.store.models import (
    events_table,
    webhook_attempts_table,
    webhook_deliveries_table,
    webhooks_table,
)
from hearth.store.records import EventRecord
from hearth.store.repositories._base import Repository, to_record


def new_delivery_id() -> str:
    """A fresh delivery id (what a receiver sees as ``X-Hearth-Delivery``)."""
    return f"dl-{secrets.token_hex(12)}"


class EventRepo(Repository):
    """Appends events, reads them back in order, and forgets the old ones."""

    async def append(
        self,
        *,
        type: str,
        user_id: str | None,
        vm_id: str | None,
        data: str,
        retry_for: timedelta,
    ) -> tuple[EventRecord, int]:
        """Store the event and, in the same transaction, one pending delivery per webhook that
        subscribes to it (retried for ``retry_for``); the event and that count.

        Appends run one at a time, so events become visible in the order of their ids: an id is
        drawn at the INSERT but seen at the COMMIT, and a reader that saw id N+1 moves its
        cursor past it (``list(after=)``), so an id N committed later would never be read.
        """
        now = self._clock()
        values = {"type": type, "user_id": user_id, "vm_id": vm_id, "data": data}
        async with self._writes.begin() as conn:
            await serialize(conn, Serialized.EVENT_APPEND)
            inserted = events_table.insert().values(**values, created_at=now)
            row = (await conn.execute(inserted.returning(*events_table.c))).one()
            # Shared locks on the webhooks until this commits: a webhook deleted meanwhile goes
            # after these deliveries (and takes them), never between the read and the insert,
            # which would fail the whole event on its foreign key (PostgreSQL; SQLite
            # serializes writers).
            listed = select(webhooks_table.c.id, webhooks_table.c.events)
            hooks = await conn.execute(listed.with_for_update(read=True))
            targets = [hook.id for hook in hooks if type in json.loads(hook.events)]
            if targets:
                await conn.execute(
                    webhook_deliveries_table.insert(),
                    [
                        {
                            "id": new_delivery_id(),
                            "webhook_id": webhook_id,
                            "event_id": row.id,
                            "status": DeliveryStatus.PENDING,
                            "attempts": 0,
                            "next_attempt_at": now,
                            "give_up_at": now + retry_for,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for webhook_id in targets
                    ],
                )
        return to_record(EventRecord, row), len(targets)

    async def list(
        self, *, after: int = 0, user_id: str | None = None, limit: int = 100
    ) -> builtins.list[EventRecord]:
        """Events after id ``after``, oldest first; only ``user_id``'s when given."""
        statement = select(events_table).where(events_table.c.id > after)
        if user_id is not None:
            statement = statement.where(events_table.c.user_id == user_id)
        statement = statement.order_by(events_table.c.id).limit(limit)
        return await self._read_records(EventRecord, statement)

    async def last_id(self) -> int:
        """The newest event's id (0 for an empty log)."""
        row = await self._read_one(select(func.coalesce(func.max(events_table.c.id), 0)))
        return int(row[0]) if row is not None else 0

    async def prune(self, before: datetime, *, batch: int = 5000) -> int:
        """Forget up to ``batch`` of the events stored before ``before`` that no webhook is
        still owed, oldest first, with their finished deliveries and those deliveries'
        attempts, in one transaction; how many events went (``batch``: call again)."""
        deliveries = webhook_deliveries_table
        owed = exists().where(
            deliveries.c.event_id == events_table.c.id,
            deliveries.c.status == DeliveryStatus.PENDING.value,
        )
        old = (
            select(events_table.c.id)
            .where(events_table.c.created_at < before, ~owed)
            .order_by(events_table.c.id)
            .limit(batch)
        )
        async with self._writes.begin() as conn:
            ids = [row.id for row in await conn.execute(old)]
            if not ids:
                return 0
            theirs = select(deliveries.c.id).where(deliveries.c.event_id.in_(ids))
            attempts = webhook_attempts_table
            await conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(theirs)))
            await conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(ids)))
            await conn.execute(delete(events_table).where(events_table.c.id.in_(ids)))
        return len(ids)
