"""Credential expiry: the vault looked over on an interval, each document told once when it is
about to expire and once when it has.

A document whose expiry is within ``HEARTH_CREDENTIAL_EXPIRING_S`` is ``expiring``
(``credential.expiring``), one past it ``expired`` (``credential.expired``: its user must log in
again unless a CLI VM holds a refreshed copy, which the pull-back brings into the vault; a new
document starts over). The store records which event each document was told with, by
compare-and-set, so each goes out once whichever controller sees it first. The
``hearth_credentials`` gauge counts documents per provider and state.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hearth.config import Settings
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.periodic import every
from hearth.store import Store
from hearth.store.records import CredentialRecord
from hearth_agent.wire import Provider

_log = get_logger("credentials.expiry")
STATES = ("valid", "expiring", "expired", "needs_login", "unknown")
_TOLD = {"expiring": EventType.CREDENTIAL_EXPIRING, "expired": EventType.CREDENTIAL_EXPIRED}


def expiry_state(record: CredentialRecord, now: datetime, window: timedelta) -> str:
    """``valid``, ``expiring`` (within ``window``), ``expired``, ``unknown`` (no expiry), or
    ``needs_login`` (the provider refused its refresh: told by the pull-back, not here)."""
    if record.needs_login:
        return "needs_login"
    if record.expires_at is None:
        return "unknown"
    if record.expires_at <= now:
        return "expired"
    return "expiring" if record.expires_at - now <= window else "valid"


class ExpiryWatch:
    """Looks the vault over, tells expiry events and sets the credentials gauge."""

    def __init__(
        self, *, store: Store, events: EventLog, metrics: ControllerMetrics, settings: Settings
    ) -> None:
        self.store = store
        self.events = events
        self.metrics = metrics
        self.window = timedelta(seconds=settings.credential_expiring_s)
        self.interval_s = settings.credential_check_interval_s

    async def run(self) -> None:
        """Check forever (cancel to stop); a check that fails is logged and the next one runs."""
        await every(self.interval_s, self.check_once, what="credential expiry check")

    async def check_once(self, now: datetime | None = None) -> Counter[tuple[str, str]]:
        """One look over the vault; the documents per (provider, state)."""
        now = now or datetime.now(UTC)
        counts: Counter[tuple[str, str]] = Counter()
        for record in await self.store.credentials.all():
            state = expiry_state(record, now, self.window)
            counts[(record.provider, state)] += 1
            if state in _TOLD and record.expiry_told != state:
                await self._tell(record, state)
        for provider in Provider:
            for state in STATES:
                count = counts[(provider.value, state)]
                self.metrics.credentials.labels(provider=provider.value, state=state).set(count)
        return counts

    async def _tell(self, record: CredentialRecord, state: str) -> None:
        if not await self.store.credentials.mark_expiry_told(
            record.user_id, record.provider, sha256=record.sha256, told=state
        ):
            return  # told already (another controller), or the document changed meanwhile
        assert record.expires_at is not None
        _log.info("credential_" + state, user_id=record.user_id, provider=record.provider)
        await self.events.emit(
            _TOLD[state],
            user_id=record.user_id,
            vm_id=record.delivered_to_vm_id,
            provider=record.provider,
            expiresAt=record.expires_at.isoformat(),
        )
