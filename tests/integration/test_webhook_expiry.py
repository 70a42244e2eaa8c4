"""A delivery past its deadline (``give_up_at``) is not sent again: it is marked failed.

In process over the fake backend, a receiver on loopback, on SQLite and PostgreSQL. A delivery
owed since before the controller was down for days (written to the store as it would stand
then) is never sent and ends failed, counted as a failed delivery; a fresh event to the same
receiver is delivered meanwhile.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from hearth.config import Settings
from hearth.events.types import DeliveryStatus, EventType
from hearth.store.models import events_table, webhook_deliveries_table
from hearth.store.records import utc_now
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.integration.test_webhook_dispatch import make_webhook
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver


async def stale_delivery(api: Api, hook_id: str) -> tuple[str, int]:
    """A vm.ready of three days ago whose delivery gave up a day ago, still pending (as a
    controller down meanwhile left it); its delivery's id and its event's."""
    then = utc_now() - timedelta(days=3)
    async with api.ctl.store.engine.begin() as conn:
        inserted = events_table.insert().values(
            type="vm.ready", user_id=None, vm_id="vm-stale", data="{}", created_at=then
        )
        event_id = (await conn.execute(inserted.returning(events_table.c.id))).scalar_one()
        await conn.execute(
            webhook_deliveries_table.insert().values(
                id="dl-stale",
                webhook_id=hook_id,
                event_id=event_id,
                status=DeliveryStatus.PENDING,
                attempts=1,
                next_attempt_at=then + timedelta(seconds=10),
                give_up_at=then + timedelta(days=2),
                last_status_code=503,
                created_at=then,
                updated_at=then,
            )
        )
    return "dl-stale", int(event_id)


async def test_a_delivery_past_its_deadline_is_never_sent_and_ends_failed(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    settings = api_settings.with_overrides(webhook_allow_private=True, webhook_backoff_s=0.05)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        hook_id = await make_webhook(api, receiver.url, ["vm.ready"])
        delivery_id, stale_event = await stale_delivery(api, hook_id)
        await api.ctl.events.emit(EventType.VM_READY, vm_id="vm-fresh")  # wakes the dispatcher

        await receiver.wait_for("vm.ready")
        async with asyncio.timeout(10):
            while (
                stale := await api.ctl.store.webhooks.delivery(hook_id, delivery_id)
            ).status == DeliveryStatus.PENDING:
                await asyncio.sleep(0.05)
        metrics = (await api.client.get("/metrics", headers=api.headers())).text

    assert [r.event["vmId"] for r in receiver.received] == ["vm-fresh"]
    assert stale_event not in [r.event["id"] for r in receiver.received]
    assert stale.status == DeliveryStatus.FAILED
    assert stale.attempts == 1  # no attempt past the deadline
    assert 'hearth_webhook_deliveries_total{outcome="failed"} 1.0' in metrics
