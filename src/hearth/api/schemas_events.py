"""The wire forms of events and webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StrictStr

from hearth.api.schemas import RequestModel, WireModel
from hearth.events.types import DeliveryStatus, EventType
from hearth.events.webhooks import LATEST_ATTEMPTS, Delivery
from hearth.store.records import AttemptRecord, DeliveryRecord, WebhookRecord

EVENT_NAMES = ", ".join(f"`{member.value}`" for member in EventType)


class EventOut(WireModel):
    """One event: its id (the log's order; ``since`` pages after it), name, whose, and data."""

    id: int
    type: str
    created_at: datetime
    user_id: str | None
    vm_id: str | None
    data: dict[str, Any]


class EventList(WireModel):
    """``GET /api/events``: events after ``since``, oldest first, and where to go on from."""

    events: list[EventOut]
    last: int


class WebhookCreate(RequestModel):
    """``POST /api/webhooks``: where to send (http or https) and which events."""

    url: Annotated[StrictStr, Field(min_length=1, max_length=2000)]
    events: Annotated[
        list[Annotated[StrictStr, Field(max_length=64)]],
        Field(min_length=1, max_length=64, description=f"event names: {EVENT_NAMES}"),
    ]


class WebhookOut(WireModel):
    """A webhook (its secret is never shown again after the create)."""

    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookOut):
    """The create's answer: the webhook and its signing secret, shown this once."""

    secret: str = Field(
        description="signs every delivery: `X-Hearth-Signature: t=<unix seconds>,v1=<hex "
        'HMAC-SHA256 of "<t>.<raw body>">`'
    )

    @classmethod
    def of(cls, record: WebhookRecord, secret: str) -> WebhookCreated:
        """The wire form of a new webhook."""
        return cls.of_record(record, secret=secret)


class WebhookList(WireModel):
    """``GET /api/webhooks``."""

    webhooks: list[WebhookOut]


class AttemptOut(WireModel):
    """One try: when, the receiver's status code (none if it never answered), why it failed."""

    n: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(WireModel):
    """One event's delivery to the webhook (``id`` is the ``X-Hearth-Delivery`` it carries)."""

    id: str
    event_id: int
    event_type: str
    status: DeliveryStatus
    attempts: list[AttemptOut] = Field(
        description=f"the latest {LATEST_ATTEMPTS} attempts, oldest first; every one pages at "
        "`GET /api/webhooks/{id}/deliveries/{deliveryId}/attempts`"
    )
    attempt_count: int = Field(description="how many attempts there were")
    next_attempt_at: datetime | None
    give_up_at: datetime
    created_at: datetime

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        """The wire form of a delivery with its attempts."""
        record = delivery.record
        pending = record.status is DeliveryStatus.PENDING
        return cls(
            id=record.id,
            event_id=record.event_id,
            event_type=delivery.event_type,
            status=record.status,
            attempts=[AttemptOut.of_record(attempt) for attempt in delivery.attempts],
            attempt_count=record.attempts,
            next_attempt_at=record.next_attempt_at if pending else None,
            give_up_at=record.give_up_at,
            created_at=record.created_at,
        )


class DeliveryList(WireModel):
    """``GET /api/webhooks/{id}/deliveries``: newest first."""

    deliveries: list[DeliveryOut]


class AttemptList(WireModel):
    """``GET /api/webhooks/{id}/deliveries/{deliveryId}/attempts``: newest first."""

    attempts: list[AttemptOut]
    attempt_count: int = Field(description="how many attempts the delivery has had")
    next_before: int | None = Field(
        description="`before` for the next (older) page; null when there is none"
    )

    @classmethod
    def of(cls, delivery: DeliveryRecord, page: list[AttemptRecord], *, limit: int) -> AttemptList:
        """A page of ``limit`` attempts at most, newest first."""
        more = len(page) == limit and page[-1].n > 1
        return cls(
            attempts=[AttemptOut.of_record(attempt) for attempt in page],
            attempt_count=delivery.attempts,
            next_before=page[-1].n if more else None,
        )
