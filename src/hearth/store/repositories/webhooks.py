"""Webhooks, their deliveries (the outbox's rows) and each delivery's attempts."""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Subquery, delete, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.errors import NotFound, QuotaExceeded
from hearth.events.types import DeliveryStatus
from hearth.store.locks import Serialized, serialize
from hearth.store.models import (
    events_table,
    webhook_attempts_table,
    webhook_deliveries_table,
    webhooks_table,
)
from hearth.store.records import AttemptRecord, DeliveryRecord, EventRecord, WebhookRecord
from hearth.store.repositories._base import Repository

_hooks = webhooks_table
_deliveries = webhook_deliveries_table
_attempts = webhook_attempts_table


def _webhook(row: Row[Any]) -> WebhookRecord:
    values = dict(row._mapping)
    values["events"] = tuple(json.loads(values["events"]))
    return WebhookRecord(**values)


def _prefixed(table: Any, prefix: str) -> list[Any]:
    return [column.label(f"{prefix}{column.name}") for column in table.c]


def _unprefixed(row: Any, prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in row._mapping.items() if k.startswith(prefix)}


def _latest_attempts(delivery_ids: Sequence[str], latest: int, *, lateral: bool) -> Subquery:
    """The last ``latest`` attempts of each delivery, each read through the primary key.

    PostgreSQL's planner turns a plain join into a scan of every attempt (cut by a hash join)
    once the deliveries hold much of the table; a lateral subquery with a LIMIT is an index
    scan per delivery, from its newest attempt back. SQLite has no LATERAL but searches the
    join's range per delivery: a delivery's attempts are numbered 1 to its count without a
    gap (each is stored with the count it moves to), so its last ones are the numbers above
    its count less ``latest``.
    """
    if lateral:
        newest = (
            select(_attempts)
            .where(_attempts.c.delivery_id == _deliveries.c.id)
            .order_by(_attempts.c.n.desc())
            .limit(latest)
            .lateral()
        )
        return (
            select(newest)
            .select_from(_deliveries.join(newest, true()))
            .where(_deliveries.c.id.in_(list(delivery_ids)))
            .subquery()
        )
    return (
        select(_attempts)
        .join(_deliveries, _deliveries.c.id == _attempts.c.delivery_id)
        .where(
            _attempts.c.delivery_id.in_(list(delivery_ids)),
            _attempts.c.n > _deliveries.c.attempts - latest,
        )
        .subquery()
    )


async def _delete_hooks(conn: AsyncConnection, which: ColumnElement[bool]) -> list[str]:
    """Delete the webhooks ``which`` selects, with their deliveries and their attempts, in the
    caller's transaction; their ids, in order."""
    # First the webhooks' rows: an event being written for one commits its deliveries before
    # they are read here (``EventRepo.append``), and none comes after.
    locked = select(_hooks.c.id).where(which).order_by(_hooks.c.id).with_for_update()
    ids = [str(row.id) for row in await conn.execute(locked)]
    if ids:
        theirs = select(_deliveries.c.id).where(_deliveries.c.webhook_id.in_(ids))
        await conn.execute(delete(_attempts).where(_attempts.c.delivery_id.in_(theirs)))
        await conn.execute(delete(_deliveries).where(_deliveries.c.webhook_id.in_(ids)))
        await conn.execute(delete(_hooks).where(_hooks.c.id.in_(ids)))
    return ids


class WebhookRepo(Repository):
    """Persists webhooks and the state of every delivery owed to them."""

    async def insert(self, record: WebhookRecord, *, limit: int | None = None) -> WebhookRecord:
        """Store a new webhook; with ``limit``, QuotaExceeded when there are that many already.

        The count and the insert are one transaction that runs alone (SQLite's writers do;
        on PostgreSQL an advisory lock), so creates running side by side cannot pass the limit
        together.
        """
        values = {
            "id": record.id,
            "url": record.url,
            "events": json.dumps(list(record.events)),
            "key_id": record.key_id,
            "nonce": record.nonce,
            "ciphertext": record.ciphertext,
            "created_at": self._clock(),
        }
        async with self._writes.begin() as conn:
            await serialize(conn, Serialized.WEBHOOK_CREATE)
            if limit is not None:
                count = await conn.scalar(select(func.count()).select_from(_hooks))
                if (count or 0) >= limit:
                    raise QuotaExceeded(f"there are {limit} webhooks already; remove one first")
            row = (await conn.execute(_hooks.insert().values(values).returning(*_hooks.c))).one()
        return _webhook(row)

    async def list(self) -> builtins.list[WebhookRecord]:
        """Every webhook, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(_hooks).order_by(_hooks.c.created_at, _hooks.c.id))
        return [_webhook(row) for row in rows]

    async def get(self, webhook_id: str) -> WebhookRecord:
        """The webhook; NotFound if there is none."""
        row = await self._read_one(select(_hooks).where(_hooks.c.id == webhook_id))
        if row is None:
            raise NotFound(f"webhook {webhook_id} does not exist")
        return _webhook(row)

    async def delete(self, webhook_id: str) -> None:
        """Remove the webhook with its deliveries and their attempts; NotFound if none."""
        async with self._writes.begin() as conn:
            if not await _delete_hooks(conn, _hooks.c.id == webhook_id):
                raise NotFound(f"webhook {webhook_id} does not exist")

    async def delete_sealed_under(self, key_id: str) -> builtins.list[str]:
        """Remove, in one transaction, every webhook whose signing secret is sealed under master
        key ``key_id`` (lost: it can sign nothing again), with their deliveries and attempts;
        their ids, in order."""
        async with self._writes.begin() as conn:
            return await _delete_hooks(conn, _hooks.c.key_id == key_id)

    async def due(
        self, now: datetime, *, limit: int = 50, skip_webhooks: Collection[str] = ()
    ) -> builtins.list[tuple[DeliveryRecord, EventRecord, WebhookRecord]]:
        """Pending deliveries whose next attempt is due and whose deadline has not passed,
        soonest first, with their event and webhook; none of the webhooks in
        ``skip_webhooks``."""
        statement = (
            select(
                *_prefixed(_deliveries, "d_"),
                *_prefixed(events_table, "e_"),
                *_prefixed(_hooks, "w_"),
            )
            .join(events_table, events_table.c.id == _deliveries.c.event_id)
            .join(_hooks, _hooks.c.id == _deliveries.c.webhook_id)
            .where(
                _deliveries.c.status == DeliveryStatus.PENDING,
                _deliveries.c.next_attempt_at <= now,
                _deliveries.c.give_up_at > now,
            )
            .order_by(_deliveries.c.next_attempt_at, _deliveries.c.id)
            .limit(limit)
        )
        if skip_webhooks:
            statement = statement.where(_deliveries.c.webhook_id.not_in(list(skip_webhooks)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        found = []
        for row in rows:
            hook = _unprefixed(row, "w_")
            hook["events"] = tuple(json.loads(hook["events"]))
            found.append(
                (
                    DeliveryRecord(**_unprefixed(row, "d_")),
                    EventRecord(**_unprefixed(row, "e_")),
                    WebhookRecord(**hook),
                )
            )
        return found

    async def next_due(self, *, skip_webhooks: Collection[str] = ()) -> datetime | None:
        """When the soonest pending delivery is due (none of ``skip_webhooks``'); None if
        nothing is pending."""
        statement = select(func.min(_deliveries.c.next_attempt_at)).where(
            _deliveries.c.status == DeliveryStatus.PENDING
        )
        if skip_webhooks:
            statement = statement.where(_deliveries.c.webhook_id.not_in(list(skip_webhooks)))
        row = await self._read_one(statement)
        return None if row is None else row[0]

    async def give_up(self, now: datetime) -> builtins.list[str]:
        """Mark failed, in one statement, every pending delivery whose deadline has passed by
        ``now`` and that is not claimed for an attempt (an attempt in flight moves its own on);
        the webhook of each one marked. Such a delivery is never due again, and its event can
        go with the others once retention reaches it."""
        late = (
            _deliveries.c.status == DeliveryStatus.PENDING,
            _deliveries.c.next_attempt_at <= now,
            _deliveries.c.give_up_at <= now,
        )
        # Read first: the dispatcher asks every round, and a write would take SQLite's lock.
        if await self._read_one(select(_deliveries.c.id).where(*late).limit(1)) is None:
            return []
        async with self._writes.begin() as conn:
            rows = await conn.execute(
                update(_deliveries)
                .where(*late)
                .values(status=DeliveryStatus.FAILED, updated_at=self._clock())
                .returning(_deliveries.c.webhook_id)
            )
            return [str(row.webhook_id) for row in rows]

    async def claim(
        self, deliveries: Sequence[DeliveryRecord], *, now: datetime, until: datetime
    ) -> set[str]:
        """Take these deliveries for an attempt each: move the next attempt of every one still
        pending, due at ``now`` and at the count read to ``until``, in one transaction; the ids
        taken. Another controller cannot take them meanwhile, and one that dies mid-attempt
        leaves them to be tried again at ``until``."""
        claimed: set[str] = set()
        async with self._writes.begin() as conn:
            for delivery in deliveries:
                moved = await conn.execute(
                    update(_deliveries)
                    .where(
                        _deliveries.c.id == delivery.id,
                        _deliveries.c.status == DeliveryStatus.PENDING,
                        _deliveries.c.attempts == delivery.attempts,
                        _deliveries.c.next_attempt_at <= now,
                    )
                    .values(next_attempt_at=until)
                )
                if moved.rowcount:
                    claimed.add(delivery.id)
        return claimed

    async def record_attempt(
        self, attempt: AttemptRecord, *, status: DeliveryStatus, next_attempt_at: datetime
    ) -> bool:
        """Store the attempt and move its delivery on (still pending: to ``next_attempt_at``),
        if it is still pending at that count; False if another writer moved it first."""
        async with self._writes.begin() as conn:
            moved = await conn.execute(
                update(_deliveries)
                .where(
                    _deliveries.c.id == attempt.delivery_id,
                    _deliveries.c.status == DeliveryStatus.PENDING,
                    _deliveries.c.attempts == attempt.n - 1,
                )
                .values(
                    status=status,
                    attempts=attempt.n,
                    next_attempt_at=next_attempt_at,
                    last_status_code=attempt.status_code,
                    last_error=attempt.error,
                    updated_at=self._clock(),
                )
            )
            if not moved.rowcount:
                return False
            await conn.execute(
                _attempts.insert().values(
                    delivery_id=attempt.delivery_id,
                    n=attempt.n,
                    at=attempt.at,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                )
            )
        return True

    async def deliveries(
        self, webhook_id: str, *, limit: int = 100
    ) -> builtins.list[tuple[DeliveryRecord, str]]:
        """The webhook's deliveries, newest first, each with its event's name."""
        statement = (
            select(*_prefixed(_deliveries, "d_"), events_table.c.type)
            .join(events_table, events_table.c.id == _deliveries.c.event_id)
            .where(_deliveries.c.webhook_id == webhook_id)
            .order_by(_deliveries.c.created_at.desc(), _deliveries.c.event_id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [(DeliveryRecord(**_unprefixed(row, "d_")), row.type) for row in rows]

    async def delivery(self, webhook_id: str, delivery_id: str) -> DeliveryRecord:
        """The webhook's delivery ``delivery_id``; NotFound if the webhook has none of that id."""
        row = await self._read_one(
            select(_deliveries).where(
                _deliveries.c.id == delivery_id, _deliveries.c.webhook_id == webhook_id
            )
        )
        if row is None:
            raise NotFound(f"delivery {delivery_id} of webhook {webhook_id} does not exist")
        return DeliveryRecord(**row._mapping)

    async def attempts(
        self, delivery_ids: Sequence[str], *, latest: int | None = None
    ) -> builtins.list[AttemptRecord]:
        """The attempts of these deliveries, in order; with ``latest``, each one's last
        ``latest`` only, the older ones not read at all."""
        ids = list(delivery_ids)
        if latest is None:
            found = select(_attempts).where(_attempts.c.delivery_id.in_(ids)).subquery()
        else:
            found = _latest_attempts(ids, latest, lateral=self._engine.dialect.name == "postgresql")
        return await self._read_records(
            AttemptRecord, select(found).order_by(found.c.delivery_id, found.c.n)
        )

    async def attempt_page(
        self, delivery_id: str, *, before: int | None = None, limit: int = 100
    ) -> builtins.list[AttemptRecord]:
        """Up to ``limit`` of the delivery's attempts numbered below ``before`` (all, if None),
        newest first."""
        statement = select(_attempts).where(_attempts.c.delivery_id == delivery_id)
        if before is not None:
            statement = statement.where(_attempts.c.n < before)
        return await self._read_records(
            AttemptRecord, statement.order_by(_attempts.c.n.desc()).limit(limit)
        )

    async def pending_count(self) -> int:
        """How many deliveries are still pending (the backlog)."""
        row = await self._read_one(
            select(func.count()).where(_deliveries.c.status == DeliveryStatus.PENDING)
        )
        return int(row[0]) if row is not None else 0
