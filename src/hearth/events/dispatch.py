"""``WebhookDispatcher``: delivers what the outbox owes, retrying with backoff until a deadline.

Works from the store only: every pending delivery is a row (written with its event), so a
restarted controller goes on where the last one stopped, and a delivery is marked done only
after its receiver answered 2xx. Each attempt is recorded. A failed attempt is tried again after
``HEARTH_WEBHOOK_BACKOFF_S`` * 2^(n-1) (at most 15 min), times a random factor in [0.5, 1] so
that many failing deliveries do not retry in step, until ``HEARTH_WEBHOOK_RETRY_FOR_S`` after
the event; then the delivery is ``failed``. One found past that deadline (the controller or its
receiver was down) is marked ``failed`` without an attempt, not sent days late. Receivers get
at-least-once delivery until that deadline, in no set order (each webhook's attempts run side
by side, each with its own backoff): they drop repeats and order by the signed body's event
``id``; the same ``X-Hearth-Delivery`` id comes on every attempt, but no signature covers it.

Attempts run side by side, at most ``PER_WEBHOOK`` to one webhook (and ``PARALLEL`` in all),
each started as soon as there is room: a receiver that never answers holds its own deliveries
back, not another webhook's. A delivery is claimed in the store before it is sent (its next
attempt moved past the timeout), so controllers sharing a store do not send it twice, and one
that dies mid-attempt leaves it to be tried again once the claim lapses. A stop gives the
attempts in flight ``STOP_GRACE_S`` to be answered and recorded, so a receiver that was
answering does not get the delivery again from the restarted controller.

Every request goes to the address the URL's host was checked to resolve to
(:mod:`hearth.events.targets`), with the URL's own ``Host`` and TLS name, no redirects followed.
The lookup of that name and the whole exchange share one deadline, ``HEARTH_WEBHOOK_TIMEOUT_S``:
a slow resolver costs a failed attempt, not a slot held past the delivery's claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from hearth import __version__
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.events.log import EventLog, event_payload
from hearth.events.signing import sign
from hearth.events.targets import Target
from hearth.events.types import DeliveryStatus
from hearth.events.webhooks import WebhookService
from hearth.httpclient import async_client
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.store import Store
from hearth.store.records import (
    AttemptRecord,
    DeliveryRecord,
    EventRecord,
    WebhookRecord,
    utc_now,
)

_log = get_logger("events.dispatch")
MAX_BACKOFF_S = 900.0
# Past this many doublings every delay is at its cap; 2 ** 1024 is no float.
_MAX_DOUBLINGS = 64
IDLE_POLL_S = 5.0  # looks at the store this often even when nothing was written here
PARALLEL = 32  # attempts in flight at once, over every webhook
PER_WEBHOOK = 2  # attempts in flight at once to one webhook
CLAIM_MARGIN_S = 30.0  # a claim lapses this long after the attempt's timeout
STOP_GRACE_S = 5.0  # how long a stop waits for the attempts in flight
ERROR_MAX = 500  # characters of an attempt's error kept

Due = tuple[DeliveryRecord, EventRecord, WebhookRecord]


@dataclass(frozen=True)
class Backoff:
    """When to try a delivery again."""

    base_s: float
    max_s: float = MAX_BACKOFF_S

    def delay(self, attempts: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempts`` failed tries (exponential, capped, jittered)."""
        doublings = min(attempts - 1, _MAX_DOUBLINGS)
        bound = min(self.base_s * 2**doublings, self.max_s)
        return float(bound * (rng or random).uniform(0.5, 1.0))

    def next_status(
        self, delivery: DeliveryRecord, now: datetime, *, delivered: bool
    ) -> tuple[DeliveryStatus, datetime]:
        """How the delivery stands after its next attempt, and when to try again."""
        if delivered:
            return DeliveryStatus.DELIVERED, now
        retry_at = now + timedelta(seconds=self.delay(delivery.attempts + 1))
        if retry_at > delivery.give_up_at:
            return DeliveryStatus.FAILED, now
        return DeliveryStatus.PENDING, retry_at


def _busy(load: Counter[str]) -> set[str]:
    """The webhooks with ``PER_WEBHOOK`` attempts in flight, of the attempts per webhook."""
    return {hook_id for hook_id, n in load.items() if n >= PER_WEBHOOK}


def body_of(event: EventRecord) -> bytes:
    """The JSON a receiver gets for ``event``."""
    return json.dumps(event_payload(event), separators=(",", ":")).encode()


class WebhookDispatcher:
    """Sends due deliveries in the background (:meth:`start`, :meth:`stop`)."""

    def __init__(
        self,
        *,
        store: Store,
        webhooks: WebhookService,
        events: EventLog,
        settings: Settings,
        metrics: ControllerMetrics,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.events = events
        self.metrics = metrics
        self.backoff = Backoff(settings.webhook_backoff_s)
        self.allow_private = settings.webhook_allow_private
        self.timeout_s = settings.webhook_timeout_s
        # No connection is kept for the next request: TLS names are checked per connection,
        # and two receivers' names may share an address.
        self._client = async_client(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[None], str] = {}  # each attempt: its webhook's id
        self._attempt_ended = asyncio.Event()  # room for another attempt, maybe to that webhook
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Deliver in the background until :meth:`stop`."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop starting attempts, give those in flight ``STOP_GRACE_S`` to end and be recorded
        (one cut short is tried again when its claim lapses; what is pending stays pending in
        the store), and close the client."""
        task, self._task = self._task, None
        if task is not None:
            # The loop ends between its rounds, so a delivery it has claimed always has its
            # attempt begun (a cancel between the claim and the attempt would leave it claimed,
            # untried, until the claim lapsed); a loop the store holds up is cancelled.
            self._stopping.set()
            done, _ = await asyncio.wait([task], timeout=STOP_GRACE_S)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE_S)
            for attempt in late:
                attempt.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            owed = self.events.on_deliveries_owed
            owed.clear()
            self._attempt_ended.clear()
            try:
                await self._give_up()
                await self._start_due()
                wait = await self._until_next_due()
            except HearthError as exc:  # the store is down: try again later
                _log.warning("webhook_dispatch_error", error=exc.message[:300])
                wait = IDLE_POLL_S
            except Exception:
                _log.exception("webhook_dispatch_crashed")
                wait = IDLE_POLL_S
            events = (owed, self._attempt_ended, self._stopping)
            waits = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    async def _until_next_due(self) -> float:
        if len(self._in_flight) >= PARALLEL:
            return IDLE_POLL_S  # an attempt that ends wakes the loop
        busy = _busy(Counter(self._in_flight.values()))
        due = await self.store.webhooks.next_due(skip_webhooks=busy)
        if due is None:
            return IDLE_POLL_S
        return min(max((due - utc_now()).total_seconds(), 0.0), IDLE_POLL_S)

    async def _give_up(self) -> None:
        """Mark failed what is still owed past its deadline (a controller or a receiver was
        down meanwhile): never due, it gets no attempt days late."""
        expired = Counter(await self.store.webhooks.give_up(utc_now()))
        if not expired:
            return
        self.metrics.webhook_deliveries.labels(outcome="failed").inc(expired.total())
        for hook_id, count in expired.items():
            _log.warning(
                "webhook_deliveries_expired", webhook_id=hook_id, deliveries=count, outcome="failed"
            )

    async def _start_due(self) -> int:
        """Claim and start every due delivery there is room for; how many were started."""
        started = 0
        try:
            while (room := PARALLEL - len(self._in_flight)) > 0:
                now = utc_now()
                load = Counter(self._in_flight.values())
                batch = await self.store.webhooks.due(now, limit=room, skip_webhooks=_busy(load))
                if not batch:
                    break
                chosen: list[Due] = []
                for item in batch:
                    if load[item[2].id] < PER_WEBHOOK:
                        load[item[2].id] += 1
                        chosen.append(item)
                until = now + timedelta(seconds=self.timeout_s + CLAIM_MARGIN_S)
                claimed = await self.store.webhooks.claim(
                    [delivery for delivery, _, _ in chosen], now=now, until=until
                )
                for item in chosen:
                    if item[0].id in claimed:
                        self._begin(item)
                started += len(claimed)
                if not claimed or (len(batch) < room and len(chosen) == len(batch)):
                    break  # nothing more is due, or what is due is another controller's
        finally:
            with contextlib.suppress(HearthError):
                await self._count_backlog()
        return started

    def _begin(self, item: Due) -> None:
        task = asyncio.create_task(self._attempt_logged(*item))
        self._in_flight[task] = item[2].id
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._attempt_ended.set()

    async def _attempt_logged(
        self, delivery: DeliveryRecord, event: EventRecord, hook: WebhookRecord
    ) -> None:
        """One attempt; a store that fails to record it leaves it claimed, to be tried again."""
        try:
            await self._attempt(delivery, event, hook)
        except HearthError as exc:
            _log.warning(
                "webhook_attempt_not_recorded", delivery_id=delivery.id, error=exc.message[:300]
            )
        except Exception:
            _log.exception("webhook_attempt_crashed", delivery_id=delivery.id)

    async def _count_backlog(self) -> None:
        self.metrics.webhook_backlog.set(await self.store.webhooks.pending_count())

    async def _attempt(
        self, delivery: DeliveryRecord, event: EventRecord, hook: WebhookRecord
    ) -> None:
        started, at = time.monotonic(), utc_now()
        code, error = await self._send(delivery, event, hook)
        delivered = code is not None and 200 <= code < 300
        now = utc_now()
        status, next_at = self.backoff.next_status(delivery, now, delivered=delivered)
        attempt = AttemptRecord(
            delivery_id=delivery.id,
            n=delivery.attempts + 1,
            at=at,
            status_code=code,
            error=error,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        if not await self.store.webhooks.record_attempt(
            attempt, status=status, next_attempt_at=next_at
        ):
            return  # another controller attempted it meanwhile
        outcome = {
            DeliveryStatus.DELIVERED: "delivered",
            DeliveryStatus.PENDING: "retry",
            DeliveryStatus.FAILED: "failed",
        }[status]
        self.metrics.webhook_deliveries.labels(outcome=outcome).inc()
        log = _log.info if delivered else _log.warning
        log(
            "webhook_attempt",
            webhook_id=hook.id,
            delivery_id=delivery.id,
            event_type=event.type,
            attempt=attempt.n,
            status_code=code,
            outcome=outcome,
            error=error,
        )

    async def _send(
        self, delivery: DeliveryRecord, event: EventRecord, hook: WebhookRecord
    ) -> tuple[int | None, str | None]:
        """POST the event: the receiver's status code, or None and why nothing came back."""
        # One deadline for the lookup of the receiver's name and the exchange: a resolver that
        # never answers must not hold the attempt's slot, nor outlast the delivery's claim.
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body = body_of(event)
        try:
            target = Target.parse(hook.url)
            async with asyncio.timeout_at(deadline):
                address = await target.address(allow_private=self.allow_private)
            signature = sign(self.webhooks.secret_of(hook), body)
        except TimeoutError:
            return (
                None,
                f"the webhook host {target.host} did not resolve within {self.timeout_s:g} s",
            )
        except HearthError as exc:  # a name that now resolves privately, a key gone
            return None, exc.message[:ERROR_MAX]
        host = f"[{address}]" if ":" in address else address
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Hearth-Webhooks/{__version__}",
            "Host": target.netloc,
            "X-Hearth-Event": event.type,
            "X-Hearth-Delivery": delivery.id,
            "X-Hearth-Signature": signature,
        }
        url = f"{target.scheme}://{host}:{target.port}{target.path}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST", url, content=body, headers=headers, extensions=extensions
        )
        try:
            # The whole exchange within the timeout (a receiver that trickles its answer must
            # not hold the others back); only the status is read, never the body.
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except TimeoutError:
            return None, f"the receiver did not answer within {self.timeout_s:g} s"
        except Exception as exc:  # httpx's errors, and whatever else one URL makes it raise
            return None, f"{type(exc).__name__}: {exc}"[:ERROR_MAX] or type(exc).__name__
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"the receiver answered {response.status_code}"
