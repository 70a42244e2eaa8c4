"""``/api/vms``: create, list, show, change (lifetime), destroy, pause, hibernate, resume,
console."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from hearth.api.auth import AdminKey, Ctl, Key, scope_of
from hearth.api.context import Controller
from hearth.api.paging import PAGE_LIMIT_DEFAULT, After, limit_of
from hearth.api.schemas import (
    ERROR_RESPONSES,
    LIFETIME_FIELDS,
    VmCreate,
    VmLifetimePatch,
    VmList,
    VmOut,
    error_responses,
)
from hearth.control.lifetimes import Lifetime
from hearth.control.vms import LISTED
from hearth.errors import Forbidden, InvalidInput
from hearth.store import VmRecord
from hearth.vm.types import VmState, VmType

router = APIRouter(tags=["vms"], responses=ERROR_RESPONSES)


def _out(ctl: Controller, record: VmRecord, *, agent_token: str | None = None) -> VmOut:
    return VmOut.of(
        record, min_agent_version=ctl.settings.agent_min_version, agent_token=agent_token
    )


async def _create(body: VmCreate, key: Key, ctl: Ctl, response: Response, wait: bool) -> VmOut:
    if VmType(body.vm_type) is VmType.BROWSER and not key.is_admin:
        # A Browser VM has no lifetime and holds one of the host's few places (the leftover
        # sweep spares it): one a user kept would block everybody's logins.
        raise Forbidden("vmType browser: admin keys only (Browser VMs are the login flow's)")
    user_id = body.user_id or (None if key.is_admin else key.user_id)
    if user_id is None:
        raise InvalidInput("userId: required with an admin key")
    if not key.is_admin and user_id != key.user_id:
        raise Forbidden(f"this key belongs to user {key.user_id}, not {user_id}")
    spec = ctl.vms.spec_for(VmType(body.vm_type), body.vcpus, body.mem_mib)
    if spec.vm_type is not VmType.CLI and body.model_fields_set & LIFETIME_FIELDS:
        raise InvalidInput("lifetimes are for CLI VMs; a Browser VM lives as long as its login")
    lifetime = body.lifetime(Lifetime.defaults(ctl.settings))
    record = await ctl.vms.create(user_id=user_id, spec=spec, wait=wait, lifetime=lifetime)
    if not wait or record.status is not VmState.READY:
        response.status_code = 202
        return _out(ctl, record)
    response.status_code = 201
    return _out(ctl, record, agent_token=ctl.vms.agent_token(record.id))


_ACCEPTED: dict[int | str, dict[str, object]] = {
    202: {"model": VmOut, "description": "Accepted (wait=false, or not ready yet); poll it"},
    403: {
        **error_responses(403)[403],
        "description": "vmType browser with a user key (Browser VMs are the login flow's: admin "
        "keys only), or a userId not the key's",
    },
}


@router.post("/api/vms", status_code=201, responses=_ACCEPTED)
async def create_vm(
    body: VmCreate,
    key: Key,
    ctl: Ctl,
    response: Response,
    wait: Annotated[
        bool, Query(description="false: answer 202 at once and boot in the background")
    ] = True,
) -> VmOut:
    """Create a VM; 201 once its agent is healthy (``agentToken`` is shown this once). A
    ``timeoutAction`` or ``idleAction`` of ``hibernate`` where this host's VMM cannot hibernate
    (Firecracker) is 422, naming the field: such a lifetime could never end. A Browser VM is
    the login flow's: made with an admin key only (403 for a user's)."""
    return await _create(body, key, ctl, response, wait)


@router.post("/api/vm/create", status_code=201, responses=_ACCEPTED)
async def create_vm_compat(
    body: VmCreate,
    key: Key,
    ctl: Ctl,
    response: Response,
    wait: Annotated[bool, Query()] = True,
) -> VmOut:
    """Alias of ``POST /api/vms`` kept for the original controller's clients."""
    return await _create(body, key, ctl, response, wait)


def _statuses(given: list[str] | None) -> tuple[VmState, ...]:
    """The statuses ``?status=`` names (repeated, or comma-separated); every status but
    ``destroyed`` when none. InvalidInput naming what is not a status."""
    if not given:
        return LISTED
    names = [name.strip() for value in given for name in value.split(",")]
    known = [state.value for state in VmState]
    unknown = [name for name in names if name not in known]
    if unknown:
        shown = ", ".join(repr(name[:32]) for name in unknown[:5])
        raise InvalidInput(f"status: not a VM status: {shown}; one of {', '.join(known)}")
    return tuple(dict.fromkeys(VmState(name) for name in names))


@router.get("/api/vms")
async def list_vms(
    key: Key,
    ctl: Ctl,
    status: Annotated[
        list[str] | None,
        Query(
            description="only VMs in these statuses, repeated or comma-separated "
            "(`status=ready,paused`); default: every status but `destroyed`"
        ),
    ] = None,
    after: After = None,
    limit: Annotated[int, limit_of("VMs")] = PAGE_LIMIT_DEFAULT,
) -> VmList:
    """The caller's VMs (an admin key sees everybody's), oldest first, a page at a time: the
    next page is ``?after=`` the answer's ``nextAfter`` (null on the last page). Destroyed VMs
    are listed only when asked for (``status=destroyed``); failed ones are, with their error.
    A status that is not a VM's, a ``limit`` outside 1 to 1000 or an ``after`` naming no VM
    of the caller's is 422."""
    records, next_after = await ctl.vms.page_vms(
        user_id=scope_of(key), statuses=_statuses(status), after=after, limit=limit
    )
    return VmList(vms=[_out(ctl, r) for r in records], next_after=next_after)


@router.get("/api/vms/{vm_id}")
async def get_vm(vm_id: str, key: Key, ctl: Ctl) -> VmOut:
    """One VM; another user's VM is 404."""
    return _out(ctl, await ctl.vms.get(vm_id, user_id=scope_of(key)))


@router.delete("/api/vms/{vm_id}")
async def destroy_vm(vm_id: str, key: Key, ctl: Ctl) -> VmOut:
    """Destroy a VM (idempotent)."""
    return _out(ctl, await ctl.vms.destroy(vm_id, user_id=scope_of(key)))


@router.patch("/api/vms/{vm_id}")
async def change_vm(vm_id: str, body: VmLifetimePatch, key: Key, ctl: Ctl) -> VmOut:
    """Change a CLI VM's lifetime (``timeoutS``, ``idleTimeoutS``, their actions,
    ``autoResume``): the fields given are set, the others kept. 422 for a bound out of range,
    or an action of ``hibernate`` where this host's VMM cannot hibernate (naming the field)."""
    return _out(ctl, await ctl.lifetimes.change(vm_id, scope_of(key), body.lifetime))


@router.post("/api/vms/{vm_id}/pause")
async def pause_vm(vm_id: str, key: Key, ctl: Ctl) -> VmOut:
    """Pause a ready VM."""
    return _out(ctl, await ctl.vms.pause(vm_id, user_id=scope_of(key)))


@router.post("/api/vms/{vm_id}/hibernate")
async def hibernate_vm(vm_id: str, key: Key, ctl: Ctl) -> VmOut:
    """Save a ready or paused CLI VM's memory and device state to disk (encrypted) and end its
    VMM: it holds no host memory until resumed, and survives controller restarts and host
    reboots. Its delivered credentials are pulled back first. 409 for a VM in any other
    status (the message names it), 501 where the VMM cannot hibernate."""
    return _out(ctl, await ctl.vms.hibernation.hibernate(vm_id, user_id=scope_of(key)))


@router.post("/api/vms/{vm_id}/resume")
async def resume_vm(vm_id: str, key: Key, ctl: Ctl) -> VmOut:
    """Resume a paused VM, or wake a hibernated one (with its token, files, processes and
    credentials; its clock set to the host's). A hibernated VM whose saved state is missing or
    corrupt becomes ``failed`` with that reason (500 ``saved_state_corrupt``); a wake that would
    take its user past their disk quota is 409 ``quota_exceeded`` (it stays hibernated)."""
    return _out(ctl, await ctl.vms.resume(vm_id, user_id=scope_of(key)))


@router.get("/api/vms/{vm_id}/console", response_class=PlainTextResponse)
async def vm_console(
    vm_id: str,
    key: AdminKey,
    ctl: Ctl,
    lines: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> str:
    """The VM's serial console tail (admin only)."""
    return ctl.vms.console(await ctl.vms.get(vm_id), lines)
