"""Delivery: a user's stored credential document written into a CLI VM, checked and recorded.

The document goes to the VM's agent, which answers the sha256 of what it wrote; a match records
the delivery, opens the provider's API to the VM's egress path and tells ``credential.delivered``.
The provider's own CLI in the VM is then asked, offline, whether it is logged in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hearth.agent_answers import guest_text
from hearth.agent_client import AgentClient, AgentError, sha256_hex
from hearth.control.network import CliNetworks
from hearth.control.vms import VmService
from hearth.credentials.service import CredentialService
from hearth.errors import Conflict, HearthError, NotFound, VmError
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.keyed_locks import KeyedLocks
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.vm.types import BootMode, VmState, VmType
from hearth_agent.wire import Provider

_log = get_logger("auth.delivery")
_DELIVERY_ATTEMPTS = 3
_ASLEEP = (VmState.PAUSED, VmState.HIBERNATED)
_ENDED = (VmState.DESTROYED, VmState.FAILED)
# Of a guest's words (an agent's error message, what its CLI's status check answered), what a
# log line or an error quotes: the VM's root chooses them, up to the size of an agent's answer.
_SHOWN_CHARS = 300


def _in_passage(record: VmRecord) -> bool:
    """Whether a CLI VM may hold a document but cannot be asked now: neither ready, asleep
    nor ended (unhealthy, being hibernated or woken, stopping). A new VM still starting has
    never been delivered into: it holds none."""
    if record.status in (VmState.READY, *_ASLEEP, *_ENDED):
        return False
    starting = record.status is VmState.BOOTING and record.boot_mode is not BootMode.WAKE
    return not (starting or record.status is VmState.CREATING)


@dataclass
class Removal:
    """Where ``Delivery.remove_everywhere`` found a document: the VMs, and what each held."""

    vm_ids: list[str] = field(default_factory=list)
    documents: list[bytes] = field(default_factory=list)


class Delivery:
    """Writes stored documents into CLI VMs (a few tries), and checks them with the CLI.

    A user's deliveries and removals take turns in this controller: each wakes the user's
    sleeping VMs and puts them back, and a removal must not answer while a delivery it did not
    see is still writing. Across controllers a delivery whose vault document went away while
    it wrote takes it out of the VM again.
    """

    def __init__(
        self,
        *,
        vms: VmService,
        credentials: CredentialService,
        networks: CliNetworks,
        events: EventLog,
        oidc_refresh_margin_s: float = 60.0,
    ) -> None:
        self.vms = vms
        self.credentials = credentials
        self.networks = networks
        self.events = events
        self.oidc_refresh_margin_s = oidc_refresh_margin_s
        self._turns = KeyedLocks()  # one user's deliveries and deletes take turns

    async def deliver(self, user_id: str, provider: str, vm_id: str) -> None:
        """Write the user's stored document for ``provider`` into CLI VM ``vm_id`` (the flow's
        last step, for a document captured earlier), check the agent's sha256, record the
        delivery and open the provider's API to the VM."""
        vm = self.vms.live_vm(vm_id)
        await self.deliver_with(
            AgentClient(str(vm.agent_url), self.vms.agent_token(vm_id), vm_id=vm_id),
            user_id,
            provider,
            vm_id,
        )

    async def deliver_with(
        self, agent: AgentClient, user_id: str, provider: str, vm_id: str, *, fresh: bool = False
    ) -> None:
        """``deliver`` through an agent client the caller holds already. ``fresh``: the stored
        document comes from a login just now, and replaces whatever other VMs hold as it is.

        One owner at a time: what another VM's CLI refreshed comes back first (the newer
        document wins, unless this one is a fresh login), and once this VM holds it, the
        others no longer do. The user's other CLI VMs that are paused or hibernated run for
        that (whatever their autoResume; a capture forgets where the document was) and are
        put back as they were: left alone, one would come back with a second copy (whose
        refresh, where a provider rotates its tokens, would log the other VM's CLI out)."""
        async with self._turns.held(user_id):
            await self._wake_and_deliver(agent, user_id, provider, vm_id, fresh=fresh)

    async def _wake_and_deliver(
        self, agent: AgentClient, user_id: str, provider: str, vm_id: str, *, fresh: bool
    ) -> None:
        woken = []
        for record in await self._asleep(user_id, but=vm_id):
            try:
                await self.vms.resume(record.id)
            except HearthError as exc:
                # No room to run it now: the login still lands; a copy it holds is logged.
                _log.warning("credential_holder_not_woken", vm_id=record.id, error=exc.message)
                continue
            woken.append(record)
        try:
            await self._deliver_into(agent, user_id, provider, vm_id, fresh=fresh)
        finally:
            for record in woken:
                await self._put_back(record)

    async def _deliver_into(
        self, agent: AgentClient, user_id: str, provider: str, vm_id: str, *, fresh: bool
    ) -> None:
        others = await self._holders(user_id, provider, but=vm_id)
        for other in others if not fresh else ():
            await self._pull_back(other, user_id, provider)
        if provider == Provider.OIDC:
            await self._configure_refresh(agent, vm_id)
        held = await self._held_already(agent, vm_id, user_id, provider)
        document = await self.credentials.document(user_id, provider)
        expected = sha256_hex(document)
        last = "no attempt"
        for attempt in range(1, _DELIVERY_ATTEMPTS + 1):
            try:
                if held == expected:
                    written = held  # not written over: the VM's refresher may be running
                else:
                    written = await agent.put_credentials(provider, document)
            except AgentError as exc:
                last = guest_text(exc.message, _SHOWN_CHARS)
            else:
                if written == expected:
                    try:
                        await self.credentials.mark_delivered(
                            user_id, provider, vm_id, sha256=expected
                        )
                    except HearthError:
                        # Deleted or replaced in the vault while it was written (by another
                        # controller): the VM must not keep a copy nobody knows of.
                        await self._withdraw(agent, vm_id, provider, expected)
                        raise
                    await self.networks.allow_provider(vm_id, Provider(provider))
                    await self.events.emit(
                        EventType.CREDENTIAL_DELIVERED,
                        user_id=user_id,
                        vm_id=vm_id,
                        provider=provider,
                        sha256=expected,
                    )
                    for other in others:
                        await self._remove(other, provider)
                    return
                last = f"the agent wrote sha256 {written[:12]}…, expected {expected[:12]}…"
            if attempt < _DELIVERY_ATTEMPTS:
                _log.warning("delivery_retry", user_id=user_id, provider=provider, attempt=attempt)
                await asyncio.sleep(0.5 * attempt)
        raise VmError(f"delivery to CLI VM {vm_id} failed after {_DELIVERY_ATTEMPTS} tries: {last}")

    async def check_with_cli(
        self, agent: AgentClient, session_id: str, provider: str, vm_id: str
    ) -> None:
        """Ask the provider's own CLI in the CLI VM whether it is logged in now (offline).

        A CLI that says "not logged in" fails the session: the document is stored and delivered,
        but the user could not use it. Providers without a status command (oidc, gemini_cli) and
        images without the CLI are logged and let through.
        """
        if provider == Provider.OIDC:
            return
        try:
            report = await agent.cli_status(provider)
        except HearthError as exc:
            error = guest_text(exc.message, _SHOWN_CHARS)
            _log.warning("cli_status_unavailable", session_id=session_id, error=error)
            return
        command, exit_code = _shown(report.get("command")), _shown(report.get("exit_code"))
        _log.info(
            "cli_status_checked",
            session_id=session_id,
            provider=provider,
            command=command,
            exit_code=exit_code,
            logged_in=_shown(report.get("logged_in")),
            reason=_shown(report.get("reason")),
        )
        if report.get("logged_in") is False:
            raise VmError(
                f"credentials were delivered to CLI VM {vm_id}, but `{command}` "
                f"there says it is not logged in (exit code {exit_code})"
            )

    async def _configure_refresh(self, agent: AgentClient, vm_id: str) -> None:
        """Tell the VM's agent, which refreshes an ``oidc`` document itself, its way out (the
        VM's egress proxy; none: direct) and how long before expiry to refresh. A failure is
        logged: the document still works until it expires."""
        try:
            await agent.configure_refresh(
                proxy=self.networks.proxy_url(vm_id), margin_s=self.oidc_refresh_margin_s
            )
        except HearthError as exc:
            _log.warning("oidc_refresh_not_configured", vm_id=vm_id, error=exc.message[:300])

    # ---- where a provider's document lives -------------------------------------------------

    async def remove_everywhere(
        self, user_id: str, provider: str, *, then: Callable[[], Awaitable[object]] | None = None
    ) -> Removal:
        """Delete the provider's document from every CLI VM of the user (and close the
        provider's API to each): the VMs that held one, and what each held (read first: its
        CLI or agent may have refreshed it since the vault's copy). A paused or hibernated VM
        runs for it (woken, whatever its autoResume) and is put back as it was: left alone, it
        would come back later with the document and its API open. A VM that may hold it but
        cannot be asked now makes this a Conflict naming it. ``then`` (the vault's delete)
        runs after, in the same turn: no delivery of the user's lands in between."""
        async with self._turns.held(user_id):
            records = await self._cli_vms(user_id)
            removal = Removal()
            for vm_id in await self._ask(records, provider, strict=True):
                await self._take_out(vm_id, provider, removal)
            for record in records:
                if record.status in _ASLEEP:
                    await self._take_out_of_sleeper(record, provider, removal)
            if then is not None:
                await then()
            return removal

    async def _take_out_of_sleeper(self, record: VmRecord, provider: str, removal: Removal) -> None:
        """``_take_out`` for a VM listed paused or hibernated: run for it, then put back."""
        try:
            await self.vms.resume(record.id)
        except HearthError as exc:
            try:
                status = (await self.vms.get(record.id)).status
            except NotFound:
                return  # gone, its row too
            if status in _ENDED:
                return  # its saved state was lost, or it is gone: nothing in it can be used
            if status is VmState.READY:  # run again since the listing, by someone else
                await self._take_out(record.id, provider, removal)
                return
            # Still asleep (no room to wake it now) or on its way: the caller must know, and
            # the vault's document must stay, to try again.
            raise Conflict(
                f"VM {record.id} is {status.value} and could not run to have the document "
                f"removed ({exc.message}); retry, or destroy the VM"
            ) from exc
        try:
            await self._take_out(record.id, provider, removal)
        finally:
            await self._put_back(record)

    async def _put_back(self, record: VmRecord) -> None:
        """Pause or hibernate again the VM of ``record``, run for a moment from that status;
        left as it is once it is no longer ready (paused or ended by someone else meanwhile).
        A failure is logged: what it was run for is done either way."""
        try:
            if (await self.vms.get(record.id)).status is not VmState.READY:
                return
            if record.status is VmState.HIBERNATED:
                await self.vms.hibernation.hibernate(record.id)
            else:
                await self.vms.pause(record.id)
        except HearthError as exc:
            _log.warning("vm_not_put_back", vm_id=record.id, error=exc.message[:300])

    async def _cli_vms(self, user_id: str, *, but: str | None = None) -> list[VmRecord]:
        """The user's CLI VMs (but ``but``)."""
        return [
            record
            for record in await self.vms.list_vms(user_id=user_id)
            if record.vm_type is VmType.CLI and record.id != but
        ]

    async def _asleep(self, user_id: str, *, but: str | None = None) -> list[VmRecord]:
        """The user's paused or hibernated CLI VMs (but ``but``)."""
        return [r for r in await self._cli_vms(user_id, but=but) if r.status in _ASLEEP]

    async def _take_out(self, vm_id: str, provider: str, removal: Removal) -> None:
        """Read the VM's document (if any) into ``removal``, then remove it and close the
        provider's API to the VM."""
        try:
            document = await self._agent(vm_id).credentials_document(provider)
        except HearthError as exc:  # removed all the same
            error = guest_text(exc.message, _SHOWN_CHARS)
            _log.warning("credential_unread_before_removal", vm_id=vm_id, error=error)
            document = None
        except Exception:  # a bug with one VM's answer must not stop the removal
            _log.exception("credential_unread_before_removal", vm_id=vm_id)
            document = None
        if document is not None:
            removal.documents.append(document)
        if await self._remove(vm_id, provider):
            removal.vm_ids.append(vm_id)

    async def in_vm(self, vm_id: str) -> list[dict[str, object]]:
        """What the VM's agent holds, per provider: present, sha256, expiry (no secret)."""
        agent = self._agent(vm_id)
        return [await agent.credentials_facts(provider.value) for provider in Provider]

    def _agent(self, vm_id: str) -> AgentClient:
        vm = self.vms.live_vm(vm_id)
        return AgentClient(str(vm.agent_url), self.vms.agent_token(vm_id), vm_id=vm_id)

    async def _holders(self, user_id: str, provider: str, *, but: str) -> list[str]:
        """The user's running CLI VMs (but ``but``) whose agent holds a ``provider`` document."""
        return await self._ask(await self._cli_vms(user_id, but=but), provider, strict=False)

    async def _ask(self, records: list[VmRecord], provider: str, *, strict: bool) -> list[str]:
        """Those of ``records`` that are ready and whose agent holds a ``provider`` document.

        A VM that may hold one but cannot say now (its agent does not answer, or it is between
        states: see ``_in_passage``) is passed over, or with ``strict`` makes this a Conflict
        naming it: a removal must not answer done while a copy may be left.
        """
        held, unknown = [], []
        for record in records:
            if _in_passage(record):
                unknown.append(f"VM {record.id} is {record.status.value}")
                continue
            if record.status is not VmState.READY or self.vms.agent_token(record.id) is None:
                continue
            try:
                facts = await self._agent(record.id).credentials_facts(provider)
            except HearthError as exc:
                error = guest_text(exc.message, _SHOWN_CHARS)
                _log.warning("credential_holder_unknown", vm_id=record.id, error=error)
                unknown.append(f"the agent of VM {record.id} did not answer ({error})")
                continue
            if facts.get("present"):
                held.append(record.id)
        if strict and unknown:
            raise Conflict(
                f"cannot tell whether these CLI VMs hold the {provider} document: "
                f"{'; '.join(unknown)}; nothing was removed from the vault: retry, or destroy "
                "the VM"
            )
        return held

    async def _pull_back(self, vm_id: str, user_id: str, provider: str) -> None:
        # The stored record is read before the VM is asked: one captured or delivered anew
        # while the VM answers is then not replaced by the VM's older delivery.
        listed = await self.credentials.stored(user_id, provider)
        try:
            document = await self._agent(vm_id).credentials_document(provider)
        except HearthError as exc:
            error = guest_text(exc.message, _SHOWN_CHARS)
            _log.warning("credential_pull_back_failed", vm_id=vm_id, error=error)
            return
        if document is not None:
            await self.credentials.pull_back(
                user_id, provider, document, vm_id=vm_id, listed=listed
            )

    async def _held_already(
        self, agent: AgentClient, vm_id: str, user_id: str, provider: str
    ) -> str | None:
        """The sha256 of what ``vm_id`` holds, if the vault names that VM as holding the user's
        document (a delivery a stopped controller made, resumed now), else None.

        The VM's agent or CLI may have refreshed it since: that refresh comes back into the
        vault first. Written over, the vault's older document would have the VM present a
        refresh token the provider has spent (rotating tokens) and lose the grant.
        """
        listed = await self.credentials.stored(user_id, provider)
        if listed is None or listed.delivered_to_vm_id != vm_id or listed.delivered_at is None:
            return None
        try:
            document = await agent.credentials_document(provider)
        except HearthError as exc:
            error = guest_text(exc.message, _SHOWN_CHARS)
            _log.warning("credential_unread_before_delivery", vm_id=vm_id, error=error)
            return None
        if document is None:
            return None
        if sha256_hex(document) != listed.sha256:
            await self.credentials.pull_back(
                user_id, provider, document, vm_id=vm_id, listed=listed
            )
        return sha256_hex(document)

    async def _remove(self, vm_id: str, provider: str) -> bool:
        """Delete the VM's document and close the provider's API to it; whether it had one."""
        deleted = await self._agent(vm_id).delete_credentials(provider)
        await self.networks.forbid_provider(vm_id, Provider(provider))
        _log.info("credential_removed_from_vm", vm_id=vm_id, provider=provider, deleted=deleted)
        return deleted

    async def withdraw(self, agent: AgentClient, user_id: str, provider: str, vm_id: str) -> None:
        """Take a login's delivery back out of CLI VM ``vm_id`` (its session did not complete):
        the vault's ``provider`` document, if that is what the VM holds, in the user's turn
        (a failure is logged)."""
        async with self._turns.held(user_id):
            try:
                stored = await self.credentials.stored(user_id, provider)
            except HearthError as exc:
                _log.warning("credential_not_withdrawn", vm_id=vm_id, error=exc.message[:300])
                return
            if stored is not None and await self._withdraw(agent, vm_id, provider, stored.sha256):
                try:  # the vault no longer names the VM as the document's holder
                    await self.credentials.mark_withdrawn(
                        user_id, provider, vm_id, sha256=stored.sha256
                    )
                except HearthError as exc:
                    _log.warning("credential_withdrawal_unrecorded", vm_id=vm_id, error=exc.message)

    async def _withdraw(self, agent: AgentClient, vm_id: str, provider: str, sha256: str) -> bool:
        """Remove from the VM the document with ``sha256`` just written there (unless another
        replaced it since) and close the provider's API to it; whether the VM no longer holds
        it. A failure is logged."""
        try:
            if (await agent.credentials_facts(provider)).get("sha256") == sha256:
                await self._remove(vm_id, provider)
            return True
        except HearthError as exc:
            _log.warning("credential_not_withdrawn", vm_id=vm_id, error=exc.message[:300])
            return False


def _shown(value: object) -> object:
    """A field of a guest's answer as a log line or an error quotes it: None, a bool or a short
    number as it is, anything else as text cut to ``_SHOWN_CHARS`` (``guest_text``)."""
    if value is None or (isinstance(value, bool | int | float) and len(repr(value)) <= 20):
        return value
    return guest_text(value, _SHOWN_CHARS)
