"""The VMs of a login: the user's CLI VM made ready, the Browser VM started (and recorded on the
session before its boot is awaited), the Browser VM's login watched until it captures, and the
Browser VM destroyed at the end (or, left by a controller that stopped, at the next start)."""

from __future__ import annotations

import asyncio
import json

from hearth.agent_client import AgentClient, AgentError
from hearth.auth.stages import StageTimeout, within
from hearth.auth.states import BEFORE_LOGIN
from hearth.control.lifetimes import Lifetimes
from hearth.control.vms import VmService
from hearth.errors import (
    CapacityExhausted,
    Conflict,
    HearthError,
    NotFound,
    QuotaExceeded,
    VmError,
)
from hearth.logging import get_logger
from hearth.store import AuthSessionRecord, Store, VmRecord
from hearth.store.repositories.users import POOL_USER
from hearth.vm.readiness import Backoff
from hearth.vm.types import VmSpec, VmState, VmType

_log = get_logger("auth.login_vms")
# A CLI VM that stays as it is until someone acts: a login cannot use it, nor wait for it.
_STUCK = (VmState.UNHEALTHY, VmState.PAUSED, VmState.HIBERNATED)
LOGIN_LONG_POLL_S = 10.0  # how long one status request waits in the agent for the capture
# A Browser VM's destroy that fails is tried again this many times in all, then flagged.
DESTROY_TRIES = 3
# A login in a Browser VM: the VM's id, a client of its agent, the agent's login id.
Login = tuple[str, AgentClient, str]


async def ensure_cli_vm(vms: VmService, lifetimes: Lifetimes, user_id: str) -> VmRecord:
    """The user's healthy CLI VM: a ready one reused, else a paused or hibernated one resumed
    (as a command would resume it), else a new one. When the user's quota allows no new one,
    waits for one booting (or ending), or fails at once naming the VM that stands in the way
    (unhealthy, or asleep with ``autoResume`` off)."""
    backoff = Backoff(initial_s=0.2, cap_s=2.0).delays()
    while True:
        mine = [vm for vm in await vms.list_vms(user_id=user_id) if vm.vm_type is VmType.CLI]
        for vm in mine:
            if vm.status is VmState.READY and vms.agent_token(vm.id) is not None:
                return vm
        for vm in mine:
            if vm.status in (VmState.PAUSED, VmState.HIBERNATED) and vm.auto_resume:
                return await lifetimes.ensure_running(vm)
        try:
            return await vms.create(user_id=user_id, spec=vms.spec_for(VmType.CLI, None, None))
        except QuotaExceeded as exc:
            stuck = [vm for vm in mine if vm.status in _STUCK]
            if stuck:
                raise Conflict(
                    f"{exc.message}; its CLI VM {stuck[0].id} is {stuck[0].status.value}"
                    + ("" if stuck[0].auto_resume else " with autoResume off")
                    + ": resume or destroy it, then log in again"
                ) from exc
            # The user's CLI VM is still booting (or ending): wait (the stage has a deadline).
            await asyncio.sleep(next(backoff))


async def ready_cli_vm(
    vms: VmService, lifetimes: Lifetimes, user_id: str, timeout_s: float
) -> VmRecord:
    """The user's CLI VM (``ensure_cli_vm``) within ``timeout_s``, its agent proven healthy."""
    cli_vm: VmRecord = await within(
        ensure_cli_vm(vms, lifetimes, user_id),
        timeout_s,
        "starting the CLI VM",
        failed="the CLI VM did not start",
    )
    cli_agent = agent_of(vms, cli_vm)
    try:
        await cli_agent.health()
        await cli_agent.version()
    except HearthError as exc:
        raise VmError(f"CLI VM {cli_vm.id} is not healthy: {exc.message}") from exc
    return cli_vm


def agent_of(vms: VmService, vm: VmRecord) -> AgentClient:
    """A client of the agent of ``vm``, one of the controller's live VMs."""
    return AgentClient(str(vm.agent_url), vms.agent_token(vm.id), vm_id=vm.id)


async def create_browser_vm(
    vms: VmService, store: Store, session_id: str, user_id: str, spec: VmSpec
) -> VmRecord:
    """A Browser VM, waiting (within the stage's deadline) while the host has no room.

    The VM is recorded on the session as soon as it is admitted, before its boot is awaited:
    a cancel or a stage timeout during the boot does not stop the boot, so the session's
    cleanup must know the VM to destroy it (else it would run on, holding the user's and the
    host's Browser VM quota).
    """
    backoff = Backoff(initial_s=0.5, cap_s=3.0).delays()
    while True:
        creating = asyncio.ensure_future(vms.create(user_id=user_id, spec=spec, wait=False))
        try:
            record = await asyncio.shield(creating)
        except CapacityExhausted:
            await asyncio.sleep(next(backoff))
            continue
        except asyncio.CancelledError:
            # Cancelled while the VM was being admitted (it boots beside the CLI VM, whose
            # failure cancels it): the admission goes on, so destroy what it made.
            made = await asyncio.gather(creating, return_exceptions=True)
            if isinstance(made[0], VmRecord):
                await destroy_vm(vms, session_id, made[0].id)
            raise
        try:
            await store.auth_sessions.update(session_id, browser_vm_id=record.id)
        except BaseException:
            # Not on the session, so the session's cleanup would miss it: destroy it here.
            await destroy_vm(vms, session_id, record.id)
            raise
        return await vms.wait_booted(record.id)


async def wait_for_login(
    vms: VmService, browser_id: str, agent: AgentClient, login_id: str
) -> bytes:
    """The document the Browser VM's login captured; VmError if the login or the VM ends."""
    # A long poll: the capture is on the critical path of every login, and the agent answers
    # the moment it happens. An agent that does not long-poll (an older build) is polled often.
    for delay in Backoff(initial_s=0.2, cap_s=0.5).delays():
        if not vms.alive(browser_id):
            raise VmError(f"Browser VM {browser_id} stopped while waiting for the login")
        try:
            status = await agent.login_status(login_id, wait_s=LOGIN_LONG_POLL_S)
        except AgentError as exc:
            if not vms.alive(browser_id):
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
        if state == "failed" and status.get("error") == "timeout":
            # Its deadline came first in the Browser VM (its clock started a moment later,
            # but its limit may be shorter): the user ran out of time all the same.
            raise StageTimeout("timed out waiting for the user to log in (the Browser VM's limit)")
        if state in ("failed", "cancelled"):
            raise VmError(f"login {state} in the Browser VM: {status.get('error')}")
        if not status.get("waited"):
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def destroy_vm(vms: VmService, session_id: str, vm_id: str) -> str | None:
    """Destroy a login's VM, tried again after a failure; None once it is gone (or was), else
    why it is not, for the session to say (logged as an error: it holds its user's and the
    host's Browser VM quota until the controller's next start destroys it)."""
    delays = Backoff(initial_s=0.5, cap_s=2.0).delays()
    why = "no attempt"
    for attempt in range(1, DESTROY_TRIES + 1):
        try:
            await vms.destroy(vm_id)
            return None
        except NotFound:
            return None
        except HearthError as exc:
            why = exc.message
            _log.warning(
                "browser_vm_destroy_failed", session_id=session_id, attempt=attempt, error=why
            )
        if attempt < DESTROY_TRIES:
            await asyncio.sleep(next(delays))
    _log.error("browser_vm_left_running", session_id=session_id, vm_id=vm_id, error=why)
    return (
        f"its Browser VM {vm_id} could not be destroyed ({why[:300]}); the controller's next "
        "start destroys it"
    )


async def say_on_session(store: Store, session_id: str, what: str) -> None:
    """Add ``what`` to the session's message (a Browser VM its end left running)."""
    said = (await store.auth_sessions.get(session_id)).error_message
    message = what if said is None else f"{said}; {what}"
    await store.auth_sessions.update(session_id, error_message=message[:2000])


async def destroy_left_browser_vms(
    vms: VmService, store: Store, active: list[AuthSessionRecord]
) -> None:
    """At the controller's start, before the ``active`` sessions go on: destroy the Browser VMs
    of logins that ended (the last controller stopped during a cleanup, or failed to destroy
    one) and those a login admitted but never recorded (``unrecorded_browser_vms``). Left
    running, each would hold its user's Browser VM quota for good."""
    browsers = await active_browser_vms(vms)
    for ended in await store.auth_sessions.ended_naming([vm.id for vm in browsers]):
        _log.warning("browser_vm_outlived_its_login", session_id=ended.id)
        if ended.browser_vm_id:
            await destroy_vm(vms, ended.id, ended.browser_vm_id)
    for session_id, vm_id in unrecorded_browser_vms(browsers, active):
        _log.warning("browser_vm_never_recorded", session_id=session_id, vm_id=vm_id)
        await destroy_vm(vms, session_id, vm_id)


async def active_browser_vms(vms: VmService) -> list[VmRecord]:
    """The users' Browser VMs that still hold resources (the warm pool's are never listed)."""
    return [
        vm
        for vm in await vms.list_vms()
        if vm.vm_type is VmType.BROWSER and vm.is_active and vm.user_id != POOL_USER
    ]


def unrecorded_browser_vms(
    browsers: list[VmRecord], active: list[AuthSessionRecord]
) -> list[tuple[str, str]]:
    """Of ``browsers``, those a login admitted but never recorded on its session (the last
    controller stopped in between): named by no session of ``active``, and made for a user
    whose login was starting its Browser VM then, after that login began (a Browser VM the
    user made through the API before it is theirs, or beside a login that recorded its own, is
    theirs too). Each as (that session's id, the VM's)."""
    named = {s.browser_vm_id for s in active}
    starting: dict[str, AuthSessionRecord] = {}
    for session in active:
        first = starting.get(session.user_id)
        unrecorded = session.status in BEFORE_LOGIN and session.browser_vm_id is None
        if unrecorded and (first is None or session.created_at < first.created_at):
            starting[session.user_id] = session
    return [
        (starting[vm.user_id].id, vm.id)
        for vm in browsers
        if vm.id not in named
        and vm.user_id in starting
        and vm.created_at >= starting[vm.user_id].created_at
    ]
