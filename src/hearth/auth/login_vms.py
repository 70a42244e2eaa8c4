"""The VMs of a login: the user's CLI VM made ready, the Browser VM started (and recorded on the
session before its boot is awaited), and the Browser VM's login watched until it captures."""

from __future__ import annotations

import asyncio
import json

from hearth.agent_client import AgentClient, AgentError
from hearth.auth.stages import StageTimeout
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
from hearth.store import Store, VmRecord
from hearth.vm.readiness import Backoff
from hearth.vm.types import VmSpec, VmState, VmType

_log = get_logger("auth.login_vms")
# A CLI VM that stays as it is until someone acts: a login cannot use it, nor wait for it.
_STUCK = (VmState.UNHEALTHY, VmState.PAUSED, VmState.HIBERNATED)
LOGIN_LONG_POLL_S = 10.0  # how long one status request waits in the agent for the capture
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


async def destroy_vm(vms: VmService, session_id: str, vm_id: str) -> None:
    """Destroy a login's VM; one already gone is fine, a failure is logged."""
    try:
        await vms.destroy(vm_id)
    except NotFound:
        pass
    except HearthError as exc:
        _log.warning("browser_vm_destroy_failed", session_id=session_id, error=exc.message)
