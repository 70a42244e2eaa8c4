"""Events become visible in the order of their ids (SQLite and PostgreSQL).

``GET /api/events?since=`` and the event stream move their cursor past the newest id they saw,
so an event whose id was drawn before another's but committed after it would be skipped for
good. One append is held right after its INSERT (a hook on the engine waits for the test's
word there, inside the real ``EventRepo.append``) while a second append runs: the second must
not become visible first. SQLite serializes every writer; PostgreSQL needs the appends to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.util import await_

from hearth.store import Store
from hearth.store.records import EventRecord
from tests.integration.store_fixtures import *  # noqa: F403

HELD_S = 0.5


async def append(store: Store, vm_id: str) -> EventRecord:
    record, _ = await store.events.append(
        type="vm.ready", user_id="ann", vm_id=vm_id, data="{}", retry_for=timedelta(hours=1)
    )
    return record


@contextmanager
def first_event_insert_held(store: Store, held: asyncio.Event) -> Iterator[asyncio.Event]:
    """Hold the next INSERT into ``events`` (in its transaction, right after the statement)
    until the event this yields is set; ``held`` is set once it waits."""
    release = asyncio.Event()

    def hold(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.startswith("INSERT INTO events") and not held.is_set():
            held.set()
            await_(release.wait())  # in the driver's greenlet: the event loop runs on

    engine = store.engine.sync_engine
    event.listen(engine, "after_cursor_execute", hold)
    try:
        yield release
    finally:
        release.set()
        event.remove(engine, "after_cursor_execute", hold)


async def test_an_event_is_not_seen_before_an_earlier_id_that_is_still_being_written(
    store: Store,
) -> None:
    seen_before = await append(store, "vm-0")
    held = asyncio.Event()
    with first_event_insert_held(store, held) as release:
        earlier = asyncio.create_task(append(store, "vm-1"))
        await asyncio.wait_for(held.wait(), 10)
        later = asyncio.create_task(append(store, "vm-2"))
        await asyncio.sleep(HELD_S)
        meanwhile = await store.events.list(after=seen_before.id, user_id="ann")
        release.set()
        first, second = await asyncio.wait_for(asyncio.gather(earlier, later), 10)
    assert meanwhile == [], "an event was seen while one with an earlier id was being written"
    assert first.id < second.id
    page = await store.events.list(after=seen_before.id, user_id="ann")
    assert [(e.id, e.vm_id) for e in page] == [(first.id, "vm-1"), (second.id, "vm-2")]
