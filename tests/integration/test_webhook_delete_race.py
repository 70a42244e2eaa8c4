"""An event written while its webhook is deleted (PostgreSQL, where the two run side by side):
neither fails on the deliveries' foreign key. Each side is held mid-way by a transaction of
the test's own that takes the lock the other side takes, so the interleaving is certain. On
SQLite, writers are serialized and the race cannot happen."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from hearth.store import Store
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import new_webhook

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])
HELD_S = 0.5
NEW_EVENT = text(
    "INSERT INTO events (type, data, created_at) VALUES ('vm.ready', '{}', now()) RETURNING id"
)
NEW_DELIVERY = text(
    "INSERT INTO webhook_deliveries (id, webhook_id, event_id, status, attempts, "
    "next_attempt_at, give_up_at, created_at, updated_at) "
    "VALUES ('dl-race', :hook, :event, 'pending', 0, now(), now(), now(), now())"
)


async def hook(store: Store) -> str:
    record = await store.webhooks.insert(new_webhook())
    return record.id


async def append(store: Store) -> int:
    _, owed = await store.events.append(
        type="vm.ready", user_id=None, vm_id=None, data="{}", retry_for=timedelta(hours=1)
    )
    return owed


async def test_a_delete_waits_for_an_event_being_written_and_takes_its_delivery(
    store: Store,
) -> None:
    hook_id = await hook(store)
    async with store.engine.connect() as writer:  # an event's write, between read and insert
        await writer.execute(
            text("SELECT id FROM webhooks WHERE id = :id FOR SHARE"), {"id": hook_id}
        )
        deleting = asyncio.create_task(store.webhooks.delete(hook_id))
        await asyncio.sleep(HELD_S)
        assert not deleting.done(), "the delete did not wait for the event being written"
        event_id = (await writer.execute(NEW_EVENT)).scalar_one()
        await writer.execute(NEW_DELIVERY, {"hook": hook_id, "event": event_id})
        await writer.commit()
    await asyncio.wait_for(deleting, 10)
    async with store.engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM webhook_deliveries"))).scalar_one()
    assert left == 0


async def test_an_event_written_while_its_webhook_is_deleted_is_kept_without_a_delivery(
    store: Store,
) -> None:
    hook_id = await hook(store)
    async with store.engine.connect() as deleter:  # a delete that locked the webhook's row
        await deleter.execute(
            text("SELECT id FROM webhooks WHERE id = :id FOR UPDATE"), {"id": hook_id}
        )
        writing = asyncio.create_task(append(store))
        await asyncio.sleep(HELD_S)
        await deleter.execute(text("DELETE FROM webhooks WHERE id = :id"), {"id": hook_id})
        await deleter.commit()
    assert await asyncio.wait_for(writing, 10) == 0
    assert [e.type for e in await store.events.list()] == ["vm.ready"]
