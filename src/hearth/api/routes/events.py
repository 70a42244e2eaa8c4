"""``/api/events``: the event log, paged by id or followed as an event stream; and webhooks.

A user's key sees that user's events, an admin key every event. ``Accept: text/event-stream``
turns the same route into a stream that follows the log (``Last-Event-ID`` resumes). Webhooks
are an admin's: made, listed, removed, and their deliveries, each with its latest attempts;
a delivery's whole attempt history pages by itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from fastapi.sse import format_sse_event

from hearth.api.auth import AdminKey, Ctl, Key, scope_of
from hearth.api.context import Controller
from hearth.api.headers import MAX_INT64
from hearth.api.routes.execs import resume_point
from hearth.api.schemas import ERROR_RESPONSES
from hearth.api.schemas_events import (
    AttemptList,
    DeliveryList,
    DeliveryOut,
    EventList,
    EventOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from hearth.api.schemas_exec import event_stream_doc
from hearth.api.streams import EVENT_STREAM, event_stream
from hearth.events.log import event_payload

router = APIRouter(tags=["events"], responses=ERROR_RESPONSES)
MAX_ATTEMPT = 2**31 - 1  # attempts are numbered in a 32-bit column


@router.get(
    "/api/events",
    response_model=None,
    responses={
        200: {
            "description": "The events after `since`, oldest first; or, with `Accept: "
            "text/event-stream`, every event after it as it is written (`id:` is the event's "
            "id, `event:` its name, `data:` the event as JSON)",
            "content": {
                "application/json": {"schema": EventList.model_json_schema()},
                **event_stream_doc("")[200]["content"],
            },
        }
    },
)
async def list_events(
    request: Request,
    key: Key,
    ctl: Ctl,
    since: Annotated[int, Query(ge=0, le=MAX_INT64, description="the last event id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> Response:
    """Events (a user's own; an admin's: all), paged or followed."""
    user_id = scope_of(key)
    if EVENT_STREAM in request.headers.get("accept", ""):
        after = resume_point(since, last_event_id)
        # The key is looked up before each event: events are few, and may be anyone's.
        return event_stream(ctl.store, key, _stream(ctl, after, user_id), each_chunk=True)
    records = await ctl.events.list(after=since, user_id=user_id, limit=limit)
    page = EventList(
        events=[EventOut.model_validate(event_payload(r)) for r in records],
        last=records[-1].id if records else since,
    )
    return Response(page.model_dump_json(by_alias=True), media_type="application/json")


async def _stream(ctl: Controller, after: int, user_id: str | None) -> AsyncIterator[bytes]:
    """The events as they come."""
    async for record in ctl.events.follow(after=after, user_id=user_id):
        data = json.dumps(event_payload(record))
        yield format_sse_event(data_str=data, event=record.type, id=str(record.id))


@router.post("/api/webhooks", status_code=201)
async def create_webhook(body: WebhookCreate, _: AdminKey, ctl: Ctl) -> WebhookCreated:
    """A webhook for ``events`` (admin). Its signing secret is in this answer only. A URL that
    cannot be sent to (not http(s), a malformed host, a port not 1 to 65535, a private
    address unless allowed) or an unknown event name is 422; one past the cap of 100 webhooks
    is 409 ``quota_exceeded``."""
    record, secret = await ctl.webhooks.create(body.url, body.events)
    return WebhookCreated.of(record, secret)


@router.get("/api/webhooks")
async def list_webhooks(_: AdminKey, ctl: Ctl) -> WebhookList:
    """Every webhook (admin)."""
    return WebhookList(webhooks=[WebhookOut.of_record(r) for r in await ctl.webhooks.list()])


@router.get("/api/webhooks/{webhook_id}")
async def get_webhook(webhook_id: str, _: AdminKey, ctl: Ctl) -> WebhookOut:
    """One webhook (admin)."""
    return WebhookOut.of_record(await ctl.webhooks.get(webhook_id))


@router.delete("/api/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, _: AdminKey, ctl: Ctl) -> Response:
    """Remove the webhook and what it is still owed (admin)."""
    await ctl.webhooks.delete(webhook_id)
    return Response(status_code=204)


@router.get("/api/webhooks/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: str,
    _: AdminKey,
    ctl: Ctl,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    """The webhook's deliveries, newest first, each with its attempt count and latest
    attempts (admin)."""
    found = await ctl.webhooks.deliveries(webhook_id, limit=limit)
    return DeliveryList(deliveries=[DeliveryOut.of(delivery) for delivery in found])


@router.get("/api/webhooks/{webhook_id}/deliveries/{delivery_id}/attempts")
async def list_attempts(
    webhook_id: str,
    delivery_id: str,
    _: AdminKey,
    ctl: Ctl,
    before: Annotated[
        int | None,
        Query(ge=1, le=MAX_ATTEMPT, description="only attempts numbered below (`nextBefore`)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AttemptList:
    """One delivery's attempts, newest first, paged by ``before`` (admin); 404 for an unknown
    webhook or a delivery that is not the webhook's."""
    record, page = await ctl.webhooks.attempts(webhook_id, delivery_id, before=before, limit=limit)
    return AttemptList.of(record, page, limit=limit)
