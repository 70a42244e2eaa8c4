"""Credential expiry: the vault looked over on an interval, each document told once when it is
about to expire and once when it has.

A document whose expiry is within ``HEARTH_CREDENTIAL_EXPIRING_S`` is ``expiring``
(``credential.expiring``), one past it ``expired`` (``credential.expired``: its user must log in
again unless a CLI VM holds a refreshed copy, which the pull-back brings into the vault; a new
document starts over). The store records which event each document was told with, by
compare-and-set, so each goes out once whichever controller sees it first. The
``hearth_credentials`` gauge counts documents per provider and state.

A document the agent of the VM holding it keeps fresh (``oidc``: refreshed before its access
token expires, ``hearth_agent.oidc_refresh``) is not judged by the vault copy's access token,
which the VM's refreshes leave behind between two pull-backs: while that VM exists and its
refresh was not refused it is ``valid``, unless the pull-back found that even the newest copy
had expired (the agent could not refresh it) and told so. Once the VM is gone it is judged as
any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from hearth.config import Settings
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.periodic import every
from hearth.store import INACTIVE_VM_STATES, Store
from hearth.store.records import CredentialRecord
from hearth.vm.types import VmState
from hearth_agent.wire import Provider

_log = get_logger("credentials.expiry")
STATES = ("valid", "expiring", "expired", "needs_login", "unknown")
_TOLD = {"expiring": EventType.CREDENTIAL_EXPIRING, "expired": EventType.CREDENTIAL_EXPIRED}
# The providers whose document the VM's agent refreshes itself while the VM runs (every
# ``oidc`` document holds a refresh token); a vendor CLI refreshes its own only when it runs.
REFRESHED_IN_VM = frozenset({Provider.OIDC})
_EXISTING_VM = tuple(state for state in VmState if state not in INACTIVE_VM_STATES)


def refreshed_in_vm(record: CredentialRecord, vm_ids: Collection[str]) -> bool:
    """Whether the agent of a VM that still exists (one of ``vm_ids``) keeps ``record``'s
    document fresh: delivered there, of a provider the agent refreshes, not refused."""
    return (
        record.provider in REFRESHED_IN_VM
        and record.delivered_to_vm_id in vm_ids
        and not record.needs_login
    )


def expiry_state(
    record: CredentialRecord, now: datetime, window: timedelta, *, in_vm: bool = False
) -> str:
    """``valid``, ``expiring`` (within ``window``), ``expired``, ``unknown`` (no expiry), or
    ``needs_login`` (the provider refused its refresh: told by the pull-back, not here).
    ``in_vm``: a VM's agent keeps the document fresh (``refreshed_in_vm``): ``valid`` unless
    the pull-back told it expired."""
    if record.needs_login:
        return "needs_login"
    if record.expires_at is None:
        return "unknown"
    if in_vm:
        return "expired" if record.expiry_told == "expired" else "valid"
    if record.expires_at <= now:
        return "expired"
    return "expiring" if record.expires_at - now <= window else "valid"


async def tell_once(
    store: Store, events: EventLog, record: CredentialRecord, state: str, **data: object
) -> bool:
    """Tell ``state`` (``expiring`` or ``expired``) of ``record``'s document, with ``data``,
    unless it was told already or the document changed (compare-and-set); whether it was."""
    if not await store.credentials.mark_expiry_told(
        record.user_id, record.provider, sha256=record.sha256, told=state
    ):
        return False
    assert record.expires_at is not None
    _log.info("credential_" + state, user_id=record.user_id, provider=record.provider)
    await events.emit(
        _TOLD[state],
        user_id=record.user_id,
        vm_id=record.delivered_to_vm_id,
        provider=record.provider,
        expiresAt=record.expires_at.isoformat(),
        **data,
    )
    return True


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
        vm_ids = {vm.id for vm in await self.store.vms.list(statuses=_EXISTING_VM)}
        counts: Counter[tuple[str, str]] = Counter()
        for record in await self.store.credentials.all():
            in_vm = refreshed_in_vm(record, vm_ids)
            state = expiry_state(record, now, self.window, in_vm=in_vm)
            counts[(record.provider, state)] += 1
            if state in _TOLD and record.expiry_told != state:
                await tell_once(self.store, self.events, record, state)
        for provider in Provider:
            for state in STATES:
                count = counts[(provider.value, state)]
                self.metrics.credentials.labels(provider=provider.value, state=state).set(count)
        return counts
