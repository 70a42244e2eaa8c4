"""``WebhookService``: an admin's webhooks, made, listed and removed, and their deliveries.

The signing secret is made here, shown once (in the answer to the create), and kept sealed by
the credential vault (bound to the webhook's id); it never reaches a log or an error.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Delivery:
    """One delivery as shown: the row, its event's name, and every attempt."""

    record: DeliveryRecord
    event_type: str
    attempts: tuple[AttemptRecord, ...]


class WebhookService:
    """Makes, lists and removes webhooks; opens their secrets for the dispatcher."""

    def __init__(self, *, store: Store, vault: CredentialVault, settings: Settings) -> None:
        self.store = store
        self.vault = vault
        self.allow_private = settings.webhook_allow_private

    async def create(self, url: str, events: Sequence[str]) -> tuple[WebhookRecord, str]:
        """A new webhook and its signing secret (InvalidInput for a bad URL or event name,
        QuotaExceeded when there are ``MAX_WEBHOOKS`` already)."""
        names = _event_names(events)
        target = Target.parse(url)
        await target.address(allow_private=self.allow_private)
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
        """The webhook's deliveries, newest first, with their attempts (NotFound)."""
        await self.store.webhooks.get(webhook_id)
        rows = await self.store.webhooks.deliveries(webhook_id, limit=limit)
        attempts = await self.store.webhooks.attempts([record.id for record, _ in rows])
        by_delivery: dict[str, list[AttemptRecord]] = {}
        for attempt in attempts:
            by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
        return [
            Delivery(record, event_type, tuple(by_delivery.get(record.id, ())))
            for record, event_type in rows
        ]


def _event_names(events: Sequence[str]) -> tuple[str, ...]:
    """The subscribed names, each checked (InvalidInput naming an unknown one)."""
    if not events:
        raise InvalidInput("a webhook needs at least one event name")
    known = {member.value for member in EventType}
    for name in events:
        if name not in known:
            raise InvalidInput(f"unknown event name {name!r}; known: {', '.join(sorted(known))}")
    return tuple(dict.fromkeys(events))
