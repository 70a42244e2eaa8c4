"""The auth flow runner: CLI VM → Browser VM login → capture → encrypted store → delivery.

One background task per session walks the status table in ``hearth.auth.states``; every move is
a compare-and-set in the store, so a cancel (or a restarted controller) can never be overwritten
by a runner that did not notice. Each stage has its own deadline. Whatever the ending, the
Browser VM is destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hearth.agent_client import AgentClient, AgentError
from hearth.auth.delivery import Delivery
from hearth.auth.providers import LoginPlan, login_plan, parse_provider
from hearth.auth.states import TERMINAL, AuthStatus
from hearth.config import Settings
from hearth.control.network import CliNetworks
from hearth.control.vms import VmService
from hearth.credentials.service import CredentialService
from hearth.errors import (
    ActiveSessionExists,
    CapacityExhausted,
    Conflict,
    HearthError,
    NotFound,
    QuotaExceeded,
    VmError,
)
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.links import link_token_hash, mint_link_token
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.node.egress import EgressPath
from hearth.node.interface import Node
from hearth.store import AuthSessionRecord, Store, VmRecord
from hearth.vm.readiness import Backoff
from hearth.vm.types import NetworkMode, VmSpec, VmState, VmType

_log = get_logger("auth.flow")
VNC_PORT = 5900
DEVTOOLS_PORT = 9223
# Racing starts retry while the session they lost to ends before they can read it.
_START_ATTEMPTS = 5


class StageTimeout(HearthError):
    """A stage of the flow did not finish before its deadline."""

    code = "auth_stage_timeout"
    http_status = 504


@dataclasses.dataclass(frozen=True, kw_only=True)
class StartedLogin:
    """What ``AuthFlow.start`` returns: the session, and its view link if this call made it."""

    session: AuthSessionRecord
    view_url: str | None  # shown once; the store keeps only the hash of its token


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
    ) -> None:
        self.settings = settings
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
        # One egress path per session whose Browser VM may reach its provider; closed at the end.
        self._egress: dict[str, EgressPath] = {}
        self.on_awaiting_user: Callable[[AuthSessionRecord], Awaitable[None]] | None = None

    # ---- API-facing ------------------------------------------------------------------------

    async def start(self, user_id: str, name: str) -> StartedLogin:
        """Start a login, or return the user's active one for that provider (no duplicates).

        Racing starts agree on one session: the store admits one active session per user and
        provider, and a start that loses the race returns the winner's. If that one has already
        ended, the next attempt starts anew. The view link is in the result only for the call
        that created the session: the store keeps its token's hash, never the token.
        """
        provider = parse_provider(name)
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
            await self._destroy_browser(record)
        _log.info("auth_cancelled", session_id=session_id)
        return await self.store.auth_sessions.get(session_id)

    async def get(self, session_id: str, *, user_id: str | None) -> AuthSessionRecord:
        """A session the caller may see (another user's is NotFound)."""
        record = await self.store.auth_sessions.get(session_id)
        if user_id is not None and record.user_id != user_id:
            raise NotFound(f"auth session {session_id} does not exist")
        return record

    async def recover(self) -> list[str]:
        """After a restart: fail every session left mid-flow, with a reason, and clean up."""
        failed = []
        pending = [s for s in AuthStatus if s not in TERMINAL]
        for record in await self.store.auth_sessions.list(statuses=pending):
            with contextlib.suppress(Conflict):
                record = await self.store.auth_sessions.transition(
                    record.id,
                    record.status,
                    AuthStatus.FAILED,
                    error_message=f"the controller restarted while the session was "
                    f"{record.status.value}; start a new login",
                )
                failed.append(record.id)
                self._count(record, AuthStatus.FAILED)
                await self._tell(EventType.AUTH_FAILED, record, status="failed", error="restart")
            await self._destroy_browser(record)
        if failed:
            _log.warning("auth_sessions_failed_on_restart", count=len(failed))
        return failed

    async def shutdown(self) -> None:
        """Stop every running flow (their Browser VMs are destroyed by each flow's cleanup)."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # ---- the flow --------------------------------------------------------------------------

    async def _move(
        self, session_id: str, old: AuthStatus, new: AuthStatus, **fields: object
    ) -> AuthSessionRecord:
        try:
            record = await self.store.auth_sessions.transition(session_id, old, new, **fields)
        except Conflict as exc:
            raise _Ended(exc.message) from exc
        _log.info("auth_status", session_id=session_id, status=new.value)
        return record

    async def _run(self, session_id: str) -> None:
        record = await self.store.auth_sessions.get(session_id)
        # How the session ends is written after its cleanup: a session that reads as ended has
        # no Browser VM and no egress proxy left.
        ending: tuple[AuthStatus, str] | None = None
        try:
            await self._stages(record)
        except _Ended:
            pass
        except asyncio.CancelledError:
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
            # A cancel arriving now must not interrupt the cleanup (see cancel()).
            self._cleaning.add(session_id)
            try:
                latest = await self.store.auth_sessions.get(session_id)
                await self._destroy_browser(latest)
                path = self._egress.pop(session_id, None)
                if path is not None:
                    await path.close()
            finally:
                self._cleaning.discard(session_id)
                if ending is not None:
                    await self._end(session_id, *ending)

    async def _end(self, session_id: str, status: AuthStatus, message: str) -> None:
        record = await self.store.auth_sessions.get(session_id)
        if record.status in TERMINAL:
            return
        with contextlib.suppress(Conflict):
            await self.store.auth_sessions.transition(
                session_id, record.status, status, error_message=message[:2000]
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
        sid, user = record.id, record.user_id
        plan = login_plan(record.provider, self.settings)

        await self._move(sid, AuthStatus.PENDING, AuthStatus.CLI_VM_STARTING)
        cli_vm = await self._stage(
            self._ensure_cli_vm(user),
            self.settings.cli_vm_timeout_s,
            "starting the CLI VM",
            failed="the CLI VM did not start",
        )
        cli_agent = AgentClient(str(cli_vm.agent_url), self.vms.agent_token(cli_vm.id))
        try:
            await cli_agent.health()
            await cli_agent.version()
        except HearthError as exc:
            raise VmError(f"CLI VM {cli_vm.id} is not healthy: {exc.message}") from exc
        await self._move(sid, AuthStatus.CLI_VM_STARTING, AuthStatus.CLI_VM_READY, vm_id=cli_vm.id)

        await self._move(sid, AuthStatus.CLI_VM_READY, AuthStatus.BROWSER_VM_STARTING)
        plan = await self._with_egress(sid, plan)
        browser_spec = dataclasses.replace(
            self.vms.spec_for(VmType.BROWSER, None, None),
            network=NetworkMode.USER,
            forward_ports=(VNC_PORT, DEVTOOLS_PORT)
            if self.settings.browser_devtools
            else (VNC_PORT,),
            guest_forwards=plan.guest_forwards,
        )
        browser = await self._stage(
            self._create_browser_vm(sid, user, browser_spec),
            self.settings.browser_vm_timeout_s,
            "starting the Browser VM",
            failed="the Browser VM did not start",
        )
        browser_agent = AgentClient(str(browser.agent_url), self.vms.agent_token(browser.id))
        login = await browser_agent.login_start(plan.start_body)
        deadline = datetime.now(UTC) + timedelta(seconds=self.settings.login_timeout_s)
        waiting = await self._move(
            sid,
            AuthStatus.BROWSER_VM_STARTING,
            AuthStatus.AWAITING_USER,
            login_url=str(login.get("authorize_url", "")),
            stage_deadline_at=deadline,
        )
        if self.on_awaiting_user is not None:
            await self.on_awaiting_user(waiting)

        document = await self._stage(
            self._wait_for_login(browser.id, browser_agent, str(login["login_id"])),
            self.settings.login_timeout_s,
            "waiting for the user to log in",
        )
        await self.credentials.capture(user, record.provider, document)
        await self._move(sid, AuthStatus.AWAITING_USER, AuthStatus.CREDENTIALS_CAPTURED)
        await self._destroy_browser(await self.store.auth_sessions.get(sid))

        await self._move(sid, AuthStatus.CREDENTIALS_CAPTURED, AuthStatus.DELIVERING)
        await self.delivery.deliver_with(cli_agent, user, record.provider, cli_vm.id, fresh=True)
        await self.delivery.check_with_cli(cli_agent, sid, record.provider, cli_vm.id)
        await self._move(sid, AuthStatus.DELIVERING, AuthStatus.COMPLETED)
        self._count(record, AuthStatus.COMPLETED)
        _log.info("auth_completed", session_id=sid, user_id=user, provider=record.provider)
        await self._tell(EventType.AUTH_COMPLETED, record, vmId=cli_vm.id)

    async def _with_egress(self, session_id: str, plan: LoginPlan) -> LoginPlan:
        """Open the session's egress path on the node if its login may reach anything; the
        adjusted plan: the Browser VM gets the path's guest forward (Chromium in the image uses
        it as its proxy), and a vendor CLI gets it as HTTPS_PROXY through the start body."""
        if not plan.egress_allow:
            return plan
        path = await self.node.open_egress(plan.egress_allow, owner=session_id)
        self._egress[session_id] = path
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

    async def _stage(
        self, work: Awaitable[Any], seconds: float, what: str, *, failed: str | None = None
    ) -> Any:
        """``work`` within ``seconds`` (else StageTimeout naming ``what``); a VM error is
        prefixed with ``failed``, so the session's message says which stage failed."""
        try:
            return await asyncio.wait_for(work, seconds)
        except TimeoutError:
            raise StageTimeout(f"timed out after {seconds:.0f} s {what}") from None
        except VmError as exc:
            if failed is None:
                raise
            raise VmError(f"{failed}: {exc.message}") from exc

    async def _ensure_cli_vm(self, user_id: str) -> VmRecord:
        """The user's healthy CLI VM, reused when there is one, else a new one."""
        backoff = Backoff(initial_s=0.2, cap_s=2.0).delays()
        while True:
            for vm in await self.vms.list_vms(user_id=user_id):
                usable = vm.vm_type is VmType.CLI and vm.status is VmState.READY
                if usable and self.vms.agent_token(vm.id) is not None:
                    return vm
            try:
                return await self.vms.create(
                    user_id=user_id, spec=self.vms.spec_for(VmType.CLI, None, None)
                )
            except QuotaExceeded:
                # The user's CLI VM is still booting: wait for it (the stage has a deadline).
                await asyncio.sleep(next(backoff))

    async def _create_browser_vm(self, session_id: str, user_id: str, spec: VmSpec) -> VmRecord:
        """A Browser VM, waiting (within the stage's deadline) while the host has no room.

        The VM is recorded on the session as soon as it is admitted, before its boot is awaited:
        a cancel or a stage timeout during the boot does not stop the boot, so the session's
        cleanup must know the VM to destroy it (else it would run on, holding the user's and the
        host's Browser VM quota).
        """
        backoff = Backoff(initial_s=0.5, cap_s=3.0).delays()
        while True:
            try:
                record = await self.vms.create(user_id=user_id, spec=spec, wait=False)
            except CapacityExhausted:
                await asyncio.sleep(next(backoff))
                continue
            try:
                await self.store.auth_sessions.update(session_id, browser_vm_id=record.id)
            except BaseException:
                # Not on the session, so the session's cleanup would miss it: destroy it here.
                await self._destroy_vm(session_id, record.id)
                raise
            return await self.vms.wait_booted(record.id)

    async def _wait_for_login(self, browser_id: str, agent: AgentClient, login_id: str) -> bytes:
        # Polled often: the capture is on the critical path of every login (≈ one request each).
        for delay in Backoff(initial_s=0.2, cap_s=0.5).delays():
            if not self.vms.alive(browser_id):
                raise VmError(f"Browser VM {browser_id} stopped while waiting for the login")
            try:
                status = await agent.login_status(login_id)
            except AgentError as exc:
                if not self.vms.alive(browser_id):
                    raise VmError(
                        f"Browser VM {browser_id} stopped while waiting for the login"
                    ) from exc
                raise VmError(f"Browser VM {browser_id}'s agent failed: {exc.message}") from exc
            state = status.get("status")
            if state == "captured":
                full = await agent.login_status(login_id, content=True)
                document = full.get("document")
                if isinstance(document, dict):
                    return json.dumps(document, indent=2).encode() + b"\n"
                if isinstance(document, str):
                    return document.encode()
                raise VmError("the Browser VM reported a capture without a document")
            if state in ("failed", "cancelled"):
                raise VmError(f"login {state} in the Browser VM: {status.get('error')}")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _destroy_browser(self, record: AuthSessionRecord) -> None:
        if record.browser_vm_id:
            await self._destroy_vm(record.id, record.browser_vm_id)

    async def _destroy_vm(self, session_id: str, vm_id: str) -> None:
        try:
            await self.vms.destroy(vm_id)
        except NotFound:
            pass
        except HearthError as exc:
            _log.warning("browser_vm_destroy_failed", session_id=session_id, error=exc.message)
