"""The wire forms of live agent updates and rollouts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt

from hearth.api.schemas import RequestModel, WireModel
from hearth.control.agent_updates import Rollout, UpdateResult


class AgentUpdateIn(RequestModel):
    """``POST /api/vms/{id}/agent/update``."""

    force: StrictBool = Field(
        False, description="update even while a login or a run is in progress in the VM"
    )


class AgentUpdateOut(WireModel):
    """How a VM's update ended: ``updated``; ``rolled_back`` (the new version did not answer
    healthy within the deadline, so the VM went back to the previous one; ``error`` says why);
    ``current`` (it already ran that version); ``failed`` (refused before it began);
    ``interrupted`` (the VM was destroyed, paused or hibernated during the update, so the new
    version was not judged there; ``error`` says which, and no ``agent.update_failed`` is told)."""

    vm_id: str
    status: Literal["updated", "rolled_back", "current", "failed", "interrupted"]
    from_version: str | None
    to_version: str
    started_at: datetime
    ended_at: datetime
    error: str | None = None

    @classmethod
    def of(cls, result: UpdateResult) -> AgentUpdateOut:
        """The wire form of a result."""
        return cls.of_record(result)


class RolloutIn(RequestModel):
    """``POST /api/agent/rollout``."""

    max_unavailable: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        1, description="how many VMs may be updating at once"
    )
    force: StrictBool = Field(False, description="update VMs with a login or run in progress too")


class RolloutVm(WireModel):
    """One VM of a rollout: ``pending``, ``updating``, how its update ended (``interrupted``:
    destroyed, paused or hibernated during it), or ``skipped`` (when its turn came it was gone or
    no longer ready: destroyed, paused, hibernated; ``error`` says which). A skipped or
    interrupted VM neither keeps the version from the images nor vouches for it."""

    vm_id: str
    status: Literal[
        "pending",
        "updating",
        "updated",
        "rolled_back",
        "current",
        "failed",
        "skipped",
        "interrupted",
    ]
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None


class RolloutOut(WireModel):
    """A rollout of the controller's agent build over every ready VM running another version."""

    id: str
    version: str
    status: Literal["running", "done"]
    max_unavailable: int
    force: bool
    started_at: datetime
    ended_at: datetime | None
    max_concurrent: int = Field(description="the most VMs that were updating at once")
    vms: list[RolloutVm]
    images_changed: list[str] = Field(
        description="once every VM that tried the version took it, and at least one runs it: "
        "the images written with it (new VMs carry it; their restore templates are rebuilt)"
    )
    pool_recycled: int = Field(description="pooled VMs replaced by ones on the new images")
    images_error: str | None = Field(
        description="why the images were left as they were: a VM did not take the version "
        "(rolled back or refused; a skipped or interrupted VM does not count), or no VM ran it "
        "healthy (every VM skipped or interrupted, or none to update: the version is untested)"
    )

    @classmethod
    def of(cls, rollout: Rollout) -> RolloutOut:
        """The wire form of a rollout."""
        vms = []
        for vm_id in rollout.vm_ids:
            result = rollout.results.get(vm_id)
            if result is not None:
                vms.append(RolloutVm.of_record(result))
            else:
                waiting: Literal["updating", "pending"] = (
                    "updating" if vm_id in rollout.updating else "pending"
                )
                vms.append(RolloutVm(vm_id=vm_id, status=waiting))
        return cls.of_record(rollout, status="running" if rollout.running else "done", vms=vms)
