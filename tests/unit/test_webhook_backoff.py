"""The webhook dispatcher's backoff: doubling from the base, capped, jittered, at any count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hearth.events.dispatch import MAX_BACKOFF_S, Backoff
from hearth.events.types import DeliveryStatus
from hearth.store.records import DeliveryRecord


def test_the_delay_doubles_from_the_base_with_jitter() -> None:
    backoff = Backoff(5.0)
    for attempts, bound in ((1, 5.0), (2, 10.0), (3, 20.0), (10, MAX_BACKOFF_S)):
        delay = backoff.delay(attempts)
        assert bound * 0.5 <= delay <= bound


def test_the_delay_stays_capped_after_a_thousand_failed_attempts() -> None:
    # HEARTH_WEBHOOK_RETRY_FOR_S may be 30 days: past 1024 attempts (a week or so of retries
    # every 7.5 to 15 min) 2 ** attempts is too large for a float.
    backoff = Backoff(5.0)
    for attempts in (1025, 5000, 100_000):
        assert MAX_BACKOFF_S * 0.5 <= backoff.delay(attempts) <= MAX_BACKOFF_S


def test_a_delivery_retried_for_days_is_still_moved_on() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    delivery = DeliveryRecord(
        id="dl-1",
        webhook_id="wh-1",
        event_id=1,
        status=DeliveryStatus.PENDING,
        attempts=3000,
        next_attempt_at=now,
        give_up_at=now + timedelta(days=10),
        last_status_code=500,
        last_error="the receiver answered 500",
        created_at=now - timedelta(days=20),
        updated_at=now,
    )
    status, retry_at = Backoff(5.0).next_status(delivery, now, delivered=False)
    assert status == DeliveryStatus.PENDING
    assert timedelta(seconds=MAX_BACKOFF_S / 2) <= retry_at - now <= timedelta(seconds=900)
