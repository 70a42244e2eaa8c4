"""Live agent updates: ``POST /api/vms/{id}/agent/update``; rollouts, ``/api/agent/rollout``."""

from __future__ import annotations

from fastapi import APIRouter

from hearth.api.auth import AdminKey, Ctl, Key, scope_of
from hearth.api.schemas import ERROR_RESPONSES
from hearth.api.schemas_agent import AgentUpdateIn, AgentUpdateOut, RolloutIn, RolloutOut
from hearth.errors import NotFound

router = APIRouter(tags=["agent"], responses=ERROR_RESPONSES)


@router.post("/api/vms/{vm_id}/agent/update")
async def update_agent(
    vm_id: str, key: Key, ctl: Ctl, body: AgentUpdateIn | None = None
) -> AgentUpdateOut:
    """Push the controller's agent build into a ready VM and wait until it answers healthy on
    it (``updated``), or until the VM has put the previous version back (``rolled_back``,
    ``agent.update_failed``); ``interrupted`` when the VM was destroyed, paused or hibernated
    under it. 409 while a login or run is in progress there, unless ``force``."""
    force = body is not None and body.force
    result = await ctl.agent_updates.update(vm_id, user_id=scope_of(key), force=force)
    return AgentUpdateOut.of(result)


@router.post("/api/agent/rollout", status_code=202)
async def start_rollout(_: AdminKey, ctl: Ctl, body: RolloutIn | None = None) -> RolloutOut:
    """Update every ready VM whose agent is not the controller's build, at most
    ``maxUnavailable`` at once (admin); 409 while another rollout runs. Follow it with
    ``GET /api/agent/rollout``."""
    rollout = await ctl.agent_updates.start_rollout(
        max_unavailable=body.max_unavailable if body is not None else 1,
        force=body is not None and body.force,
    )
    return RolloutOut.of(rollout)


@router.get("/api/agent/rollout")
async def get_rollout(_: AdminKey, ctl: Ctl) -> RolloutOut:
    """The running or last rollout (admin); 404 when there has been none."""
    if ctl.agent_updates.rollout is None:
        raise NotFound("no rollout has run since the controller started")
    return RolloutOut.of(ctl.agent_updates.rollout)
