"""``EventLog``: the one place events are written, read and followed.

An event is stored (with the deliveries it owes every subscribed webhook, in one transaction)
before anyone is told: the webhook dispatcher works from those rows, so a controller that dies
right after loses no event and no delivery. Events older than ``HEARTH_EVENTS_KEEP_DAYS`` are
forgotten (hourly), unless a webhook is still owed one. Readers page by id
(``GET /api/events?since=``) or follow the log as it grows (the same route as SSE). A user's key
sees that user's events; an admin key sees all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hearth.config import Settings
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.periodic import every
from hearth.store import Store
from hearth.store.records import EventRecord

_log = get_logger("events")
# A follower looks again this often even when this controller wrote nothing (another might).
FOLLOW_POLL_S = 1.0
# Old events are forgotten this often, this many per transaction.
PRUNE_INTERVAL_S = 3600.0
PRUNE_BATCH = 5000


def event_payload(event: EventRecord) -> dict[str, Any]:
    """An event as clients and webhook receivers get it."""
    return {
        "id": event.id,
        "type": event.type,
        "createdAt": event.created_at.isoformat(),
        "userId": event.user_id,
        "vmId": event.vm_id,
        "data": json.loads(event.data),
    }


class EventLog:
    """Writes events to the store, wakes whoever waits for them, and reads them back."""

    def __init__(self, *, store: Store, settings: Settings, metrics: ControllerMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self._retry_for = timedelta(seconds=settings.webhook_retry_for_s)
        self._keep = timedelta(days=settings.events_keep_days)
        self._written = asyncio.Event()
        self.on_deliveries_owed = asyncio.Event()  # set when a new event owes a webhook

    async def emit(
        self,
        event_type: EventType,
        *,
        user_id: str | None = None,
        vm_id: str | None = None,
        **data: Any,
    ) -> EventRecord | None:
        """Store the event (never raises: a store that fails is logged, and the caller's work
        goes on); the stored event, or None if it could not be stored."""
        try:
            record, owed = await self.store.events.append(
                type=event_type.value,
                user_id=user_id,
                vm_id=vm_id,
                data=json.dumps(data, default=str),
                retry_for=self._retry_for,
            )
        except (SQLAlchemyError, OSError) as exc:
            _log.error("event_not_stored", type=event_type.value, vm_id=vm_id, error=str(exc))
            return None
        self.metrics.events.labels(type=event_type.value).inc()
        _log.info("event", type=event_type.value, event_id=record.id, vm_id=vm_id, owed=owed)
        self._written.set()
        self._written = asyncio.Event()
        if owed:
            self.on_deliveries_owed.set()
        return record

    async def list(
        self, *, after: int = 0, user_id: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Events after ``after``, oldest first (``user_id``: only that user's)."""
        return await self.store.events.list(after=after, user_id=user_id, limit=limit)

    async def follow(self, *, after: int, user_id: str | None = None) -> AsyncIterator[EventRecord]:
        """Every event after ``after`` as it is written, forever (the caller stops reading)."""
        while True:
            written = self._written
            batch = await self.list(after=after, user_id=user_id)
            for record in batch:
                after = record.id
                yield record
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(written.wait(), FOLLOW_POLL_S)

    async def prune_once(self) -> int:
        """Forget the events older than ``HEARTH_EVENTS_KEEP_DAYS`` that no webhook is still
        owed (with their deliveries); how many went."""
        before = datetime.now(UTC) - self._keep
        pruned = 0
        while batch := await self.store.events.prune(before, batch=PRUNE_BATCH):
            pruned += batch
            if batch < PRUNE_BATCH:
                break
        if pruned:
            _log.info("events_pruned", count=pruned, before=before.isoformat())
        return pruned

    async def prune(self) -> None:
        """Run ``prune_once`` now and every ``PRUNE_INTERVAL_S`` (cancel to stop)."""
        await every(PRUNE_INTERVAL_S, self.prune_once, what="event log pruning")
