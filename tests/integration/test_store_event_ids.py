"""Event ids are never handed out twice, on SQLite and PostgreSQL: readers page the log by id (a
follower's cursor, ``Last-Event-ID``, ``since=``, a webhook receiver's dedup), so an event
stored after retention has forgotten the newest ones still gets an id above every old one, also
in a database upgraded from before that was so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import text

from hearth.events.types import DeliveryStatus
from hearth.store import Store, alembic_config, create_store_engine
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import TEST_KEY_SECRET

RETRY = timedelta(days=1)
AT = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)


def forget_everything(store: Store) -> object:
    """Retention with every stored event past it."""
    return store.events.prune(datetime.now(UTC) + timedelta(days=1))


async def test_an_event_after_retention_forgot_the_newest_gets_a_higher_id(store: Store) -> None:
    for n in range(3):
        await store.events.append(
            type="vm.ready", user_id="ann", vm_id=f"vm-{n}", data="{}", retry_for=RETRY
        )
    cursor = (await store.events.list(user_id="ann"))[-1].id
    assert await forget_everything(store) == 3
    assert await store.events.last_id() == 0

    new, _ = await store.events.append(
        type="vm.failed", user_id="ann", vm_id="vm-0", data="{}", retry_for=RETRY
    )

    assert new.id > cursor
    assert [event.id for event in await store.events.list(after=cursor, user_id="ann")] == [new.id]


async def insert_0013_rows(url: str) -> None:
    """Migrate to 0013 and store events 1, 2 and 7 (the gap: ones already forgotten), a webhook
    delivered event 1 and still owed event 7, and event 1's attempt."""
    engine = create_store_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0013"))
            # Numbered by the database, as the product's events are (PostgreSQL's sequence
            # does not move for ids given explicitly).
            for n in range(1, 8):
                await conn.execute(
                    text(
                        "INSERT INTO events (type, user_id, vm_id, data, created_at)"
                        " VALUES ('vm.ready', 'ann', :vm, :data, :at)"
                    ),
                    {"vm": f"vm-{n}", "data": f'{{"n": {n}}}', "at": AT},
                )
            await conn.execute(text("DELETE FROM events WHERE id BETWEEN 3 AND 6"))
            await conn.execute(
                text(
                    "INSERT INTO webhooks (id, url, events, key_id, nonce, ciphertext, created_at)"
                    " VALUES ('wh-1', 'http://127.0.0.1/', '[\"vm.ready\"]', 'k', :b, :b, :at)"
                ),
                {"b": b"x", "at": AT},
            )
            for delivery_id, event_id, status in (("dl-1", 1, "delivered"), ("dl-7", 7, "pending")):
                await conn.execute(
                    text(
                        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, status,"
                        " next_attempt_at, give_up_at, created_at, updated_at)"
                        " VALUES (:id, 'wh-1', :event, :status, :at, :at, :at, :at)"
                    ),
                    {"id": delivery_id, "event": event_id, "status": status, "at": AT},
                )
            await conn.execute(
                text(
                    "INSERT INTO webhook_attempts (delivery_id, n, at, status_code, duration_ms)"
                    " VALUES ('dl-1', 1, :at, 200, 3)"
                ),
                {"at": AT},
            )
    finally:
        await engine.dispose()


async def test_upgrading_keeps_the_events_with_their_deliveries_and_never_reuses_an_id(
    empty_database_url: str,
) -> None:
    await insert_0013_rows(empty_database_url)

    async with await Store.open(empty_database_url, key_secret=TEST_KEY_SECRET) as store:
        kept = await store.events.list()
        assert [(e.id, e.vm_id, e.data, e.created_at) for e in kept] == [
            (1, "vm-1", '{"n": 1}', AT),
            (2, "vm-2", '{"n": 2}', AT),
            (7, "vm-7", '{"n": 7}', AT),
        ]
        deliveries = sorted(await store.webhooks.deliveries("wh-1"), key=lambda d: d[0].id)
        assert [(d.id, d.event_id, d.status) for d, _ in deliveries] == [
            ("dl-1", 1, DeliveryStatus.DELIVERED),
            ("dl-7", 7, DeliveryStatus.PENDING),
        ]
        assert [a.status_code for a in await store.webhooks.attempts(["dl-1"])] == [200]
        if store.engine.dialect.name == "sqlite":
            async with store.engine.connect() as conn:
                dangling = await conn.exec_driver_sql("PRAGMA foreign_key_check")
                assert dangling.all() == []

        # Event 7 is owed, so it stays; once given up, retention forgets it too.
        assert await forget_everything(store) == 2
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE webhook_deliveries SET status = 'failed'"))
        assert await forget_everything(store) == 1
        new, _ = await store.events.append(
            type="vm.failed", user_id="ann", vm_id="vm-1", data="{}", retry_for=RETRY
        )
        assert new.id == 8
