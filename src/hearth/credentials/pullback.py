"""Refresh ownership: before a CLI VM goes away, pull its (possibly rotated) documents back.

Claude and Codex rotate refresh tokens on use, so once a document is delivered the CLI VM is its
single owner: the controller never refreshes it. What the VM holds when it is destroyed may be
newer than the vault's copy, so it is read back and kept if its token expires later, and only
in place of the document delivered to that VM (never into a slot emptied, or over a document
replaced, while the VM was asked). The same pull runs on an interval
(``HEARTH_PULLBACK_INTERVAL_S``) over every ready CLI VM, so the vault follows the VMs'
refreshes while they run (and its expiry watch does not call a refreshed credential expired).

An ``oidc`` document is refreshed by the VM's agent itself (``hearth_agent.oidc_refresh``); when
the issuer refused that refresh (``invalid_grant``: the grant is gone), the pull-back marks the
vault's document ``needs_login`` and tells ``credential.expired`` (reason ``refresh_refused``),
once per document. The expiry watch leaves such a document, kept fresh by the VM, to the
pull-back: when even the newest copy (the vault's, after the pull) has expired, the agent could
not refresh it (the issuer unreachable, the document gone from the VM), and ``credential.expired``
is told with reason ``not_refreshed``, once per document.

One VM's answer, whatever it is, costs only that VM's pull: the round goes on to the next VM.
Nor does its silence (an agent call waits up to 10 s, a VM may hold several documents): the
round pulls from ``PULLS_AT_ONCE`` VMs at a time, each within ``VM_PULL_DEADLINE_S``, so a VM
that answers slowly holds one of them, not everyone else's pull.
"""

from __future__ import annotations

import asyncio

from hearth.agent_client import AgentClient
from hearth.control.vms import VmService
from hearth.credentials.expiry import tell_once
from hearth.credentials.service import CredentialService
from hearth.errors import HearthError
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.periodic import every
from hearth.store import Clock, CredentialRecord, Store, VmRecord, utc_now
from hearth.vm.types import VmState, VmType
from hearth_agent.wire import Provider

_log = get_logger("credentials.pullback")
# VMs a round pulls from at once, and how long one VM's pull may take there (a few documents,
# each answered in milliseconds by an honest agent).
PULLS_AT_ONCE = 8
VM_PULL_DEADLINE_S = 30.0


class PullBack:
    """The VmService ``before_destroy`` hook that pulls delivered documents back."""

    def __init__(
        self,
        store: Store,
        credentials: CredentialService,
        events: EventLog,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.credentials = credentials
        self.events = events
        self._clock = clock

    async def run(self, vms: VmService, interval_s: float) -> None:
        """Pull back from every ready CLI VM every ``interval_s`` (cancel to stop)."""

        slots = asyncio.Semaphore(PULLS_AT_ONCE)

        async def pull_all() -> None:
            ready = [r for r in await vms.list_vms() if r.status is VmState.READY]
            await asyncio.gather(*(self._pull_from(vms, record, slots) for record in ready))

        await every(interval_s, pull_all, what="credential pull-back")

    async def _pull_from(self, vms: VmService, record: VmRecord, slots: asyncio.Semaphore) -> None:
        """``before_destroy`` for one VM of a round, in one of the round's ``slots`` and within
        ``VM_PULL_DEADLINE_S``; whatever goes wrong there is logged with the VM's id and the
        round goes on with the other VMs (another user's, maybe)."""
        try:
            async with slots, asyncio.timeout(VM_PULL_DEADLINE_S):
                await self.before_destroy(record, vms.agent_token(record.id))
        except TimeoutError:
            _log.warning("pull_back_timed_out", vm_id=record.id, after_s=VM_PULL_DEADLINE_S)
        except HearthError as exc:
            _log.warning("pull_back_failed", vm_id=record.id, error=exc.message[:300])
        except Exception:
            _log.exception("pull_back_crashed", vm_id=record.id)

    async def before_destroy(self, record: VmRecord, token: str | None) -> None:
        """Read back every document delivered to this CLI VM (whose agent ``token`` opens)
        and keep the newer ones. What the VM answers is the VM's to choose (its root may change
        any file, or the agent): an answer that cannot be taken is logged and the VM's other
        documents are still read."""
        if record.vm_type is not VmType.CLI or not record.agent_url or token is None:
            return
        agent = AgentClient(record.agent_url, token, vm_id=record.id)
        for stored in await self.store.credentials.list(record.user_id):
            if stored.delivered_to_vm_id != record.id:
                continue
            try:
                await self._pull_one(agent, record, stored)
            except HearthError as exc:
                _log.warning(
                    "pull_back_failed",
                    vm_id=record.id,
                    provider=stored.provider,
                    error=exc.message[:300],
                )
            except Exception:  # a bug with one document must not keep the VM's others
                _log.exception("pull_back_crashed", vm_id=record.id, provider=stored.provider)

    async def _pull_one(
        self, agent: AgentClient, record: VmRecord, stored: CredentialRecord
    ) -> None:
        """Keep the VM's copy of the ``stored`` document if it is newer and the vault's is still
        that delivery (one deleted, or replaced by a fresh login, while the VM was asked stays
        as it is)."""
        provider = stored.provider
        document = await agent.credentials_document(provider)
        if document is not None:
            await self.credentials.pull_back(
                record.user_id, provider, document, vm_id=record.id, listed=stored
            )
        if provider == Provider.OIDC:
            await self._check_refresh(agent, record)
            await self._tell_if_lapsed(record)

    async def _check_refresh(self, agent: AgentClient, record: VmRecord) -> None:
        """Mark the vault's ``oidc`` document ``needs_login`` if the VM's agent says the issuer
        refused to refresh it, and tell it once."""
        try:
            state = await agent.refresh_state()
        except HearthError as exc:
            _log.warning("refresh_state_unavailable", vm_id=record.id, error=exc.message[:300])
            return
        sha256 = state.get("sha256")
        if state.get("state") != "refused" or not isinstance(sha256, str):
            return
        provider = Provider.OIDC.value
        if not await self.store.credentials.mark_needs_login(
            record.user_id, provider, sha256=sha256
        ):
            return  # told already, or the vault holds another document (a newer login)
        _log.warning(
            "credential_needs_login", user_id=record.user_id, provider=provider, vm_id=record.id
        )
        # The VM's own words, so bounded; told only when it gave some.
        error = state.get("error")
        told = {} if error is None else {"error": str(error)[:300]}
        await self.events.emit(
            EventType.CREDENTIAL_EXPIRED,
            user_id=record.user_id,
            vm_id=record.id,
            provider=provider,
            reason="refresh_refused",
            **told,
        )

    async def _tell_if_lapsed(self, record: VmRecord) -> None:
        """Tell ``credential.expired`` (reason ``not_refreshed``) once if the vault's ``oidc``
        document, still the one delivered to this VM and now the newest copy of the two, has
        expired: the VM's agent did not refresh it in time."""
        stored = await self.store.credentials.get(record.user_id, Provider.OIDC.value)
        if (
            stored is None
            or stored.delivered_to_vm_id != record.id
            or stored.needs_login  # told as refused already
            or stored.expires_at is None
            or stored.expires_at > self._clock()
        ):
            return
        if await tell_once(self.store, self.events, stored, "expired", reason="not_refreshed"):
            _log.warning("credential_not_refreshed", user_id=record.user_id, vm_id=record.id)
