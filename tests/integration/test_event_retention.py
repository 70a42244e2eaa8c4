"""The event log forgets old events, on SQLite and PostgreSQL: those older than the retention go
with their finished deliveries and those deliveries' attempts; an event a webhook is still owed
stays until it is delivered or given up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hearth.config import Settings
from hearth.events.log import EventLog
from hearth.events.types import DeliveryStatus, EventType
from hearth.metrics import ControllerMetrics
from hearth.store import Store
from hearth.store.records import AttemptRecord
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import FakeClock, OpenStore, new_webhook

DAY = 24 * 3600


async def test_old_events_go_with_their_finished_deliveries_and_owed_ones_stay(
    clocked_store: Store, clock: FakeClock
) -> None:
    store = clocked_store
    hook = await store.webhooks.insert(new_webhook())
    delivered, _ = await store.events.append(
        type="vm.ready", user_id=None, vm_id="vm-1", data="{}", retry_for=timedelta(days=1)
    )
    owed, _ = await store.events.append(
        type="vm.ready", user_id=None, vm_id="vm-2", data="{}", retry_for=timedelta(days=1)
    )
    untold, _ = await store.events.append(
        type="vm.failed", user_id=None, vm_id="vm-3", data="{}", retry_for=timedelta(days=1)
    )
    [(first, _), (second, _)] = sorted(
        await store.webhooks.deliveries(hook.id), key=lambda pair: pair[0].event_id
    )
    assert first.event_id == delivered.id
    await store.webhooks.record_attempt(
        AttemptRecord(
            delivery_id=first.id, n=1, at=clock.now, status_code=200, error=None, duration_ms=3
        ),
        status=DeliveryStatus.DELIVERED,
        next_attempt_at=clock.now,
    )
    clock.advance(31 * DAY)
    recent, _ = await store.events.append(
        type="vm.failed", user_id=None, vm_id="vm-4", data="{}", retry_for=timedelta(days=1)
    )

    assert await store.events.prune(clock.now - timedelta(days=30)) == 2
    kept = [event.id for event in await store.events.list()]
    assert kept == [owed.id, recent.id], "the owed event and the recent one stay"
    [(left, _)] = await store.webhooks.deliveries(hook.id)
    assert left.id == second.id
    assert await store.webhooks.attempts([first.id]) == []
    assert untold.id not in kept
    assert await store.events.prune(clock.now - timedelta(days=30)) == 0


async def test_pruning_goes_in_batches(clocked_store: Store, clock: FakeClock) -> None:
    store = clocked_store
    for n in range(5):
        await store.events.append(
            type="vm.ready", user_id=None, vm_id=f"vm-{n}", data="{}", retry_for=timedelta(days=1)
        )
    clock.advance(2 * DAY)
    assert await store.events.prune(clock.now - timedelta(days=1), batch=2) == 2
    assert await store.events.prune(clock.now - timedelta(days=1), batch=2) == 2
    assert await store.events.prune(clock.now - timedelta(days=1), batch=2) == 1
    assert await store.events.list() == []


async def test_the_log_forgets_what_is_older_than_the_setting(
    open_store: OpenStore, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC) - timedelta(days=8))
    store = await open_store(clock=clock)
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path), "HEARTH_EVENTS_KEEP_DAYS": "7"}
    )
    log = EventLog(store=store, settings=settings, metrics=ControllerMetrics())
    await log.emit(EventType.VM_READY, vm_id="vm-old")
    clock.now = datetime.now(UTC) - timedelta(days=6)
    kept = await log.emit(EventType.VM_READY, vm_id="vm-kept")
    assert kept is not None
    assert await log.prune_once() == 1
    assert [event.id for event in await log.list()] == [kept.id]
