"""``WebhookService``: an admin's webhooks, made, listed and removed, and their deliveries.

The signing secret is made here, shown once (in the answer to the create), and kept sealed by
the credential vault (bound to the webhook's id); it never reaches a log or an error.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from dataclasses import dataclass

from hearth.config import Settings
from hearth.credentials.vault import CredentialVault, Sealed
from hearth.errors import InvalidInput
from hearth.events.signing import new_secret
from hearth.events.targets import Target
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.store import Store
from hearth.store.records import (
    WEBHOOK_SECRET_SEAL,
    AttemptRecord,
    DeliveryRecord,
    WebhookRecord,
    new_webhook_id,
)

_log = get_logger("events.webhooks")
# What the vault binds a signing secret to, with the webhook's id.
_SEAL_USER = WEBHOOK_SECRET_SEAL.bound_to
_SEAL_WHAT = "signing-secret"
MAX_WEBHOOKS = 100
# The attempts a listing shows of each delivery; the whole history pages by itself, as a
# delivery retried for days has thousands.
LATEST_ATTEMPTS = 5


@dataclass(frozen=True)
class Delivery:
    """One delivery as shown: the row (``record.attempts`` counts every attempt), its event's
    name, and its latest ``LATEST_ATTEMPTS`` attempts, oldest first."""

    record: DeliveryRecord
    event_type: str
    attempts: tuple[AttemptRecord, ...]


class WebhookService:
    """Makes, lists and removes webhooks; opens their secrets for the dispatcher."""

    def __init__(self, *, store: Store, vault: CredentialVault, settings: Settings) -> None:
        self.store = store
        self.vault = vault
        self.allow_private = settings.webhook_allow_private
        self.timeout_s = settings.webhook_timeout_s

    async def create(self, url: str, events: Sequence[str]) -> tuple[WebhookRecord, str]:
        """A new webhook and its signing secret (InvalidInput for a bad URL or event name,
        QuotaExceeded when there are ``MAX_WEBHOOKS`` already)."""
        names = _event_names(events)
        target = Target.parse(url)
        try:
            # A resolver that never answers must not hold the request (nor, in the dispatcher,
            # an attempt) past the receivers' own timeout.
            async with asyncio.timeout(self.timeout_s):
                await target.address(allow_private=self.allow_private)
        except TimeoutError:
            raise InvalidInput(
                f"the webhook host {target.host} did not resolve within {self.timeout_s:g} s"
            ) from None
        webhook_id = new_webhook_id()
        secret = new_secret()
        sealed = self.vault.encrypt(secret.encode(), user_id=_SEAL_USER, provider=webhook_id)
        record = await self.store.webhooks.insert(
            WebhookRecord(
                id=webhook_id,
                url=url,
                events=names,
                key_id=sealed.key_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
            ),
            limit=MAX_WEBHOOKS,
        )
        _log.info("webhook_created", webhook_id=webhook_id, host=target.host, events=list(names))
        return record, secret

    def secret_of(self, record: WebhookRecord) -> str:
        """The webhook's signing secret, opened by the vault."""
        sealed = Sealed(record.key_id, record.nonce, record.ciphertext)
        return self.vault.decrypt(sealed, user_id=_SEAL_USER, provider=record.id).decode()

    async def list(self) -> builtins.list[WebhookRecord]:
        """Every webhook."""
        return await self.store.webhooks.list()

    async def get(self, webhook_id: str) -> WebhookRecord:
        """One webhook (NotFound)."""
        return await self.store.webhooks.get(webhook_id)

    async def delete(self, webhook_id: str) -> None:
        """Remove the webhook and what it was owed (NotFound)."""
        await self.store.webhooks.delete(webhook_id)
        _log.info("webhook_deleted", webhook_id=webhook_id)

    async def deliveries(self, webhook_id: str, *, limit: int = 100) -> builtins.list[Delivery]:
        """The webhook's deliveries, newest first, with their latest attempts (NotFound)."""
        await self.store.webhooks.get(webhook_id)
        rows = await self.store.webhooks.deliveries(webhook_id, limit=limit)
        ids = [record.id for record, _ in rows]
        by_delivery: dict[str, list[AttemptRecord]] = {}
        for attempt in await self.store.webhooks.attempts(ids, latest=LATEST_ATTEMPTS):
            by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
        return [
            Delivery(record, event_type, _latest(record, by_delivery.get(record.id, [])))
            for record, event_type in rows
        ]

    async def attempts(
        self, webhook_id: str, delivery_id: str, *, before: int | None = None, limit: int = 100
    ) -> tuple[DeliveryRecord, builtins.list[AttemptRecord]]:
        """The delivery and up to ``limit`` of its attempts numbered below ``before``, newest
        first (NotFound for an unknown webhook, or a delivery that is not the webhook's)."""
        await self.store.webhooks.get(webhook_id)
        record = await self.store.webhooks.delivery(webhook_id, delivery_id)
        page = await self.store.webhooks.attempt_page(delivery_id, before=before, limit=limit)
        return record, page


def _latest(record: DeliveryRecord, attempts: Sequence[AttemptRecord]) -> tuple[AttemptRecord, ...]:
    """The delivery's latest attempts as of its row: one recorded since the row was read waits
    for the next look, so what is shown agrees with the row's count."""
    return tuple(attempt for attempt in attempts if attempt.n <= record.attempts)[-LATEST_ATTEMPTS:]


def _event_names(events: Sequence[str]) -> tuple[str, ...]:
    """The subscribed names, each checked (InvalidInput naming an unknown one)."""
    if not events:
        raise InvalidInput("a webhook needs at least one event name")
    known = {member.value for member in EventType}
    for name in events:
        if name not in known:
            raise InvalidInput(f"unknown event name {name!r}; known: {', '.join(sorted(known))}")
    return tuple(dict.fromkeys(events))
