"""The auth flow runner: CLI VM → Browser VM login → capture → encrypted store → delivery.

One background task per session walks the status table in ``hearth.auth.states``; every move is
a compare-and-set in the store, so a cancel can never be overwritten by a runner that did not
notice. Each stage has its own deadline. Whatever the ending, the Browser VM is destroyed. A
controller that stops leaves its sessions where they are; the next one picks each up at its
stage (``recover``), with the VMs reconciliation adopted. The last stage, the handover of the
document into the CLI VM, is in ``hearth.auth.handover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from hearth.agent_answers import guest_text
from hearth.agent_client import AgentClient
from hearth.auth.delivery import Delivery
from hearth.auth.handover import Handover, hand_over
from hearth.auth.login_vms import (
    Login,
    agent_of,
    create_browser_vm,
    destroy_left_browser_vms,
    destroy_vm,
    ready_cli_vm,
    say_on_session,
    wait_for_login,
)
from hearth.auth.providers import LoginPlan, login_plan, provider_to_start
from hearth.auth.stages import StageTimeout, within
from hearth.auth.states import BEFORE_LOGIN, TERMINAL, AuthStatus
from hearth.config import Settings
from hearth.control.lifetimes import Lifetimes
from hearth.control.network import CliNetworks
from hearth.control.vms import VmService
from hearth.credentials.service import CredentialService, Write
from hearth.errors import ActiveSessionExists, Conflict, HearthError, NotFound, VmError
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.links import link_token_hash, mint_link_token
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.node.egress import EgressPath
from hearth.node.interface import Node
from hearth.store import AuthSessionRecord, Store, VmRecord
from hearth.vm.types import NetworkMode, VmState, VmType

_log = get_logger("auth.flow")
VNC_PORT = 5900
DEVTOOLS_PORT = 9223
# Racing starts retry while the session they lost to ends before they can read it.
_START_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class StartedLogin:
    """What ``AuthFlow.start`` returns: the session, and its view link if this call made it."""

    session: AuthSessionRecord
    view_url: str | None  # shown once; the store keeps only the hash of its token


class _Prepared(NamedTuple):
    """A login started in its ready Browser VM, not yet shown to the user."""

    login: Login
    url: str  # the authorize URL (the session's login_url once shown)
    deadline: datetime  # the user's sign-in must end by then (counted from the login's start)


class _Ended(Exception):
    """The session left the runner's hands (cancelled or moved by someone else)."""


def view_token_hash(token: str) -> str:
    """What the store keeps of a session's view token."""
    return link_token_hash(token)


class AuthFlow:
    """Starts, runs, cancels and recovers auth sessions."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        vms: VmService,
        node: Node,
        credentials: CredentialService,
        networks: CliNetworks,
        events: EventLog,
        delivery: Delivery,
        metrics: ControllerMetrics,
        lifetimes: Lifetimes,
    ) -> None:
        self.settings = settings
        # A user's paused or hibernated CLI VM is resumed for their login.
        self.lifetimes = lifetimes
        self.delivery = delivery
        self.metrics = metrics  # hearth_auth_sessions_total
        self.events = events  # auth.completed, auth.failed, credential.delivered
        self.store = store
        self.vms = vms
        self.node = node
        # Where a delivered credential opens its provider's API to the CLI VM.
        self.networks = networks
        self.credentials = credentials
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cleaning: set[str] = set()
        self._stopping = False  # the controller stops: sessions are left for the next one
        # One egress path per session whose Browser VM may reach its provider; closed at the end.
        self._egress: dict[str, EgressPath] = {}
        self.on_awaiting_user: Callable[[AuthSessionRecord], Awaitable[None]] | None = None

    # ---- API-facing ------------------------------------------------------------------------

    async def start(self, user_id: str, name: str, api_key_id: str | None = None) -> StartedLogin:
        """Start a login, or return the user's active one for that provider (no duplicates);
        ``api_key_id`` is the key that asked, whose revocation ends the view link.

        Racing starts agree on one session: the store admits one active session per user and
        provider, and a start that loses the race returns the winner's. If that one has already
        ended, the next attempt starts anew. The view link is in the result only for the call
        that created the session: the store keeps its token's hash, never the token. A provider
        this controller cannot log in to (oidc without an issuer) is refused at once."""
        provider = provider_to_start(name, self.settings)
        await self.store.users.ensure(user_id)
        for _attempt in range(_START_ATTEMPTS):
            active = await self.store.auth_sessions.find_active(user_id, provider)
            if active is not None:
                return StartedLogin(session=active, view_url=None)
            session_id = f"auth-{uuid.uuid4()}"
            token = mint_link_token()
            try:
                record = await self.store.auth_sessions.insert(
                    AuthSessionRecord(
                        id=session_id,
                        user_id=user_id,
                        provider=provider,
                        view_token_hash=view_token_hash(token),
                        api_key_id=api_key_id,
                    )
                )
            except ActiveSessionExists:
                continue  # another start won: read its session
            self._launch(record)
            return StartedLogin(session=record, view_url=f"/view/{session_id}?token={token}")
        raise Conflict(
            f"{provider} logins for user {user_id} keep starting and ending under this request; "
            "retry"
        )

    def _launch(self, record: AuthSessionRecord) -> None:
        """Run a new session's flow in the background."""
        session_id = record.id
        _log.info(
            "auth_started", session_id=session_id, user_id=record.user_id, provider=record.provider
        )
        task = asyncio.create_task(self._run(session_id))
        self._tasks[session_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(session_id, None))

    async def cancel(self, session_id: str, *, user_id: str | None) -> AuthSessionRecord:
        """Cancel a session that has not ended; cancelling an ended one is a conflict."""
        while True:  # the flow may move the session between the read and the write
            record = await self.get(session_id, user_id=user_id)
            if record.status in TERMINAL:
                raise Conflict(f"auth session {session_id} already ended: {record.status.value}")
            with contextlib.suppress(Conflict):
                record = await self.store.auth_sessions.transition(
                    session_id,
                    record.status,
                    AuthStatus.CANCELLED,
                    error_message="cancelled by request",
                )
                break
        self._count(record, AuthStatus.CANCELLED)
        task = self._tasks.get(session_id)
        if task is not None:
            if session_id not in self._cleaning:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        else:
            await self._clean_up(session_id, None)
        _log.info("auth_cancelled", session_id=session_id)
        return await self.store.auth_sessions.get(session_id)

    async def get(self, session_id: str, *, user_id: str | None) -> AuthSessionRecord:
        """A session the caller may see (another user's is NotFound)."""
        record = await self.store.auth_sessions.get(session_id)
        if user_id is not None and record.user_id != user_id:
            raise NotFound(f"auth session {session_id} does not exist")
        return record

    async def recover(self) -> list[str]:
        """After a (re)start, once reconciliation adopted the VMs that survived: pick every
        session left mid-flow up at its stage (``_stages``); their ids. A session fails only if
        its stage cannot go on (a VM it needs is gone, its deadline passed)."""
        pending = [s for s in AuthStatus if s not in TERMINAL]
        records = await self.store.auth_sessions.list(statuses=pending)
        # A Browser VM that runs on for a login that ended (the last controller stopped during
        # its cleanup, or failed to destroy it), or that a login admitted but never recorded
        # (it stopped in between), would hold its user's Browser VM quota for good: it goes now.
        await destroy_left_browser_vms(self.vms, self.store, records)
        resumed = []
        for record in records:
            _log.info("auth_resumed", session_id=record.id, status=record.status.value)
            self._launch(record)
            resumed.append(record.id)
        return resumed

    async def shutdown(self) -> None:
        """Stop every running flow and leave each session where it is, its Browser VM and
        the user's view running, for the next controller to pick up (``recover``); only the
        egress paths, which live in this process, close."""
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # ---- the flow --------------------------------------------------------------------------

    async def _move(
        self, sid: str, old: AuthStatus, new: AuthStatus, *, then: Write | None = None, **kw: Any
    ) -> AuthSessionRecord:
        try:
            record = await self.store.auth_sessions.transition_with(then, sid, old, new, **kw)
        except Conflict as exc:
            raise _Ended(exc.message) from exc
        _log.info("auth_status", session_id=sid, status=new.value)
        return record

    async def _run(self, session_id: str) -> None:
        # How the session ends is written after its cleanup: a session that reads as ended has
        # no Browser VM and no egress proxy left.
        ending: tuple[AuthStatus, str] | None = None
        try:
            await self._stages(await self.store.auth_sessions.get(session_id))
        except _Ended:
            pass
        except asyncio.CancelledError:
            if self._stopping:  # left where it is for the next controller
                await self._close_egress(session_id)
                raise
            ending = (AuthStatus.CANCELLED, "cancelled")
            raise
        except StageTimeout as exc:
            ending = (AuthStatus.TIMEOUT, exc.message)
        except HearthError as exc:
            ending = (AuthStatus.FAILED, exc.message)
        except Exception as exc:
            _log.exception("auth_flow_crashed", session_id=session_id)
            ending = (AuthStatus.FAILED, f"internal error ({type(exc).__name__})")
        finally:
            if not self._stopping:
                await self._clean_up(session_id, ending)

    async def _clean_up(self, session_id: str, ending: tuple[AuthStatus, str] | None) -> None:
        """Destroy the session's Browser VM and close its egress path, then write its
        ``ending`` (if any): a session that reads as ended has neither left."""
        # A cancel arriving now must not interrupt the cleanup (see cancel()).
        self._cleaning.add(session_id)
        left = None
        try:
            left = await self._destroy_browser(await self.store.auth_sessions.get(session_id))
        finally:
            self._cleaning.discard(session_id)
            await self._close_egress(session_id)  # whatever failed above: it lives here
            if ending is not None:
                await self._end(session_id, *ending)
        if left is not None:  # said on the session, whichever way it ended
            await say_on_session(self.store, session_id, left)

    async def _close_egress(self, session_id: str) -> None:
        path = self._egress.pop(session_id, None)
        if path is not None:
            await path.close()

    async def _end(self, session_id: str, status: AuthStatus, message: str) -> None:
        record = await self.store.auth_sessions.get(session_id)
        if record.status in TERMINAL:
            return
        message = guest_text(message)  # it may quote a guest: kept and sent (webhooks) cut
        with contextlib.suppress(Conflict):
            await self.store.auth_sessions.transition(
                session_id, record.status, status, error_message=message
            )
            self._count(record, status)
            if status is not AuthStatus.CANCELLED:
                await self._tell(EventType.AUTH_FAILED, record, status=status.value, error=message)
        _log.warning("auth_ended", session_id=session_id, status=status.value)

    def _count(self, record: AuthSessionRecord, outcome: AuthStatus) -> None:
        """One more login of the record's provider ended with ``outcome``."""
        self.metrics.auth_sessions.labels(provider=record.provider, outcome=outcome.value).inc()

    async def _tell(self, event_type: EventType, record: AuthSessionRecord, **data: str) -> None:
        await self.events.emit(
            event_type,
            user_id=record.user_id,
            sessionId=record.id,
            provider=record.provider,
            **data,
        )

    async def _stages(self, record: AuthSessionRecord) -> None:
        """Walk the stages from where ``record`` is: all of them for a new session; from its
        stage for one a restarted controller picks up (``recover``), whose VMs reconciliation
        adopted. A stage that cannot go on fails the session with the reason."""
        sid, user, status = record.id, record.user_id, record.status
        plan = login_plan(record.provider, self.settings)
        booting: asyncio.Task[_Prepared] | None = None
        if status in BEFORE_LOGIN:  # the Browser VM is (re)started from here
            # A restart interrupted the Browser VM's start (or it had not begun): start it
            # again. It boots, and its login starts, beside the CLI VM; the user is shown the
            # login only once the CLI VM is proven healthy (the seed's rule: no sign-in is spent
            # on a CLI VM that could not take the credentials).
            await self._destroy_browser(record)
            booting = asyncio.create_task(self._boot_browser(sid, user, plan))
        try:
            if status in (AuthStatus.PENDING, AuthStatus.CLI_VM_STARTING):
                if status is AuthStatus.PENDING:
                    await self._move(sid, AuthStatus.PENDING, AuthStatus.CLI_VM_STARTING)
                cli_vm = await ready_cli_vm(
                    self.vms, self.lifetimes, user, self.settings.cli_vm_timeout_s
                )
                await self._move(
                    sid, AuthStatus.CLI_VM_STARTING, AuthStatus.CLI_VM_READY, vm_id=cli_vm.id
                )
                status = AuthStatus.CLI_VM_READY
            else:
                shown = status not in BEFORE_LOGIN
                cli_vm = await self._session_vm(record.vm_id, "CLI VM", shown=shown)
            if booting is not None:
                if status is AuthStatus.CLI_VM_READY:
                    await self._move(sid, AuthStatus.CLI_VM_READY, AuthStatus.BROWSER_VM_STARTING)
                booted = await booting
        except BaseException:
            if booting is not None:
                booting.cancel()  # the session's cleanup destroys what it booted
                # Retrieved whatever it ended with: the CLI VM's failure is the one reported.
                await asyncio.gather(booting, return_exceptions=True)
            raise
        cli_agent = self._agent_of(cli_vm)

        if booting is not None:
            login = await self._open_login(sid, booted)
            status = AuthStatus.AWAITING_USER
        elif status is AuthStatus.AWAITING_USER:
            login = await self._reattach(record, plan)

        if status is AuthStatus.AWAITING_USER:
            waiting = await self.store.auth_sessions.get(sid)
            left = (waiting.stage_deadline_at or datetime.now(UTC)) - datetime.now(UTC)
            document = await within(
                wait_for_login(self.vms, *login),
                max(0.0, left.total_seconds()),
                "waiting for the user to log in",
                limit_s=self.settings.login_timeout_s,
            )
            # With the session's move, or not at all: a cancel that came first keeps the vault.
            captured = (sid, AuthStatus.AWAITING_USER, AuthStatus.CREDENTIALS_CAPTURED)
            await self.credentials.capture(
                user, record.provider, document, with_move=lambda w: self._move(*captured, then=w)
            )
            status = AuthStatus.CREDENTIALS_CAPTURED
        if status is AuthStatus.CREDENTIALS_CAPTURED:
            await self._destroy_browser(await self.store.auth_sessions.get(sid))
            await self._move(sid, AuthStatus.CREDENTIALS_CAPTURED, AuthStatus.DELIVERING)

        # Delivering (again, after a restart: the sha256 check makes it idempotent).
        await hand_over(
            self.delivery,
            Handover(
                session_id=sid,
                user_id=user,
                provider=record.provider,
                vm_id=cli_vm.id,
                agent=cli_agent,
            ),
            deadline_s=self.settings.delivery_timeout_s,
            complete=lambda: self._move(sid, AuthStatus.DELIVERING, AuthStatus.COMPLETED),
            stopping=lambda: self._stopping,
        )
        self._count(record, AuthStatus.COMPLETED)
        _log.info("auth_completed", session_id=sid, user_id=user, provider=record.provider)
        await self._tell(EventType.AUTH_COMPLETED, record, vmId=cli_vm.id)

    async def _boot_browser(self, sid: str, user: str, plan: LoginPlan) -> _Prepared:
        """The login's egress path opened, its Browser VM ready (recorded on the session as
        soon as it is admitted) and the login started in it, not yet shown to the user."""
        plan = await self._with_egress(sid, plan)
        browser_spec = dataclasses.replace(
            self.vms.spec_for(VmType.BROWSER, None, None),
            network=NetworkMode.USER,
            forward_ports=(VNC_PORT, DEVTOOLS_PORT)
            if self.settings.browser_devtools
            else (VNC_PORT,),
            guest_forwards=plan.guest_forwards,
        )
        browser = await within(
            create_browser_vm(self.vms, self.store, sid, user, browser_spec),
            self.settings.browser_vm_timeout_s,
            "starting the Browser VM",
            failed="the Browser VM did not start",
        )
        # Started while the CLI VM may still be booting: its sign-in page loads meanwhile, but
        # the user sees it (the view, the login URL) only once the session is awaiting_user.
        browser_agent = self._agent_of(browser)
        deadline = datetime.now(UTC) + timedelta(seconds=self.settings.login_timeout_s)
        started = await browser_agent.login_start(plan.start_body)
        login = (browser.id, browser_agent, str(started["login_id"]))
        return _Prepared(login, str(started.get("authorize_url", "")), deadline)

    async def _open_login(self, sid: str, prepared: _Prepared) -> Login:
        """The prepared login shown to the user: the session ``awaiting_user``."""
        waiting = await self._move(
            sid,
            AuthStatus.BROWSER_VM_STARTING,
            AuthStatus.AWAITING_USER,
            login_url=prepared.url,
            stage_deadline_at=prepared.deadline,
            login_id=prepared.login[2],
        )
        if self.on_awaiting_user is not None:
            await self.on_awaiting_user(waiting)
        return prepared.login

    async def _reattach(self, record: AuthSessionRecord, plan: LoginPlan) -> Login:
        """A login left ``awaiting_user`` by a controller that stopped: its Browser VM (adopted
        with its agent and the user's view) and the login in its agent, reached again; its
        egress path reopened on the node port the Browser VM's QEMU dials."""
        browser = await self._session_vm(record.browser_vm_id, "Browser VM", shown=True)
        if record.login_id is None:
            raise VmError(f"the login in Browser VM {browser.id} is unknown (started before 0011)")
        if plan.egress_allow:
            try:
                self._egress[record.id] = await self.node.open_egress(
                    plan.egress_allow, owner=record.id, port=record.egress_port or 0
                )
            except OSError as exc:
                raise VmError(
                    f"the login's egress path could not be reopened on port "
                    f"{record.egress_port}: {exc.strerror or exc}"
                ) from exc
        _log.info("auth_reattached", session_id=record.id, browser_vm_id=browser.id)
        return browser.id, self._agent_of(browser), record.login_id

    async def _session_vm(self, vm_id: str | None, what: str, *, shown: bool) -> VmRecord:
        """The session's ``what``, ready and claimed; once the login was ``shown``, one whose
        agent missed heartbeats too (the calls that follow decide, as with no restart between).
        VmError naming why otherwise."""
        if vm_id is None:
            raise VmError(f"this login has no {what}")
        record = await self.vms.get(vm_id)
        running = record.status is VmState.READY or (shown and record.status is VmState.UNHEALTHY)
        if not running or self.vms.agent_token(vm_id) is None:
            why = f": {record.error}" if record.error else ""
            raise VmError(f"the {what} {vm_id} of this login is {record.status.value}{why}")
        return record

    def _agent_of(self, vm: VmRecord) -> AgentClient:
        return agent_of(self.vms, vm)

    async def _with_egress(self, session_id: str, plan: LoginPlan) -> LoginPlan:
        """Open the session's egress path on the node if its login may reach anything; the
        adjusted plan: the Browser VM gets the path's guest forward (Chromium in the image uses
        it as its proxy), and a vendor CLI gets it as HTTPS_PROXY through the start body."""
        if not plan.egress_allow:
            return plan
        path = await self.node.open_egress(plan.egress_allow, owner=session_id)
        self._egress[session_id] = path
        # A restarted controller reopens it on this port: the Browser VM's QEMU dials it.
        await self.store.auth_sessions.update(session_id, egress_port=path.port)
        _log.info(
            "egress_proxy_for_session",
            session_id=session_id,
            port=path.port,
            allow=list(plan.egress_allow),
        )
        # The agent sends its own provider requests through it too (the vendor CLI's token
        # exchange, or the OIDC runner's discovery and token exchange).
        body = {**plan.start_body, "proxy": path.guest_url}
        return dataclasses.replace(
            plan, guest_forwards=(*plan.guest_forwards, path.forward), start_body=body
        )

    async def _destroy_browser(self, record: AuthSessionRecord) -> str | None:
        """Destroy the session's Browser VM; None once it is gone, else why it is not."""
        if record.browser_vm_id:
            return await destroy_vm(self.vms, record.id, record.browser_vm_id)
        return None
