"""``/api/users/{id}/workspace``: a user's persistent workspace volume — show it, remove it."""

from __future__ import annotations

from fastapi import APIRouter

from hearth.api.auth import Ctl, Key
from hearth.api.routes.auth import user_for
from hearth.api.schemas import ERROR_RESPONSES, WorkspaceOut
from hearth.control.workspaces import Workspaces
from hearth.errors import NotFound
from hearth.store.records import WorkspaceRecord

router = APIRouter(tags=["workspaces"], responses=ERROR_RESPONSES)


def _workspaces(ctl: Ctl) -> Workspaces:
    if ctl.vms.workspaces is None or not ctl.vms.workspaces.enabled:
        raise NotFound("workspaces are off on this controller (HEARTH_WORKSPACE_SIZE_MIB=0)")
    return ctl.vms.workspaces


async def _out(workspaces: Workspaces, workspace: WorkspaceRecord) -> WorkspaceOut:
    holder = await workspaces.holder(workspace)
    return WorkspaceOut(
        user_id=workspace.user_id,
        size_mib=workspace.size_mib,
        attached_vm_id=holder.id if holder else None,
        created_at=workspace.created_at,
    )


@router.get("/api/users/{user_id}/workspace")
async def get_workspace(user_id: str, key: Key, ctl: Ctl) -> WorkspaceOut:
    """The user's workspace volume: its size and the VM that holds it (404: none yet; the
    user's first CLI VM makes it)."""
    workspaces = _workspaces(ctl)
    user = user_for(user_id, key.user_id, key.is_admin)
    return await _out(workspaces, await workspaces.get(user))


@router.delete("/api/users/{user_id}/workspace")
async def delete_workspace(user_id: str, key: Key, ctl: Ctl) -> WorkspaceOut:
    """Remove the user's workspace volume and everything on it (409 while a VM holds it,
    hibernated ones included: destroy it first); the next CLI VM starts with an empty one."""
    workspaces = _workspaces(ctl)
    user = user_for(user_id, key.user_id, key.is_admin)
    removed = await workspaces.delete(user)
    return WorkspaceOut(
        user_id=removed.user_id,
        size_mib=removed.size_mib,
        attached_vm_id=None,
        created_at=removed.created_at,
    )
