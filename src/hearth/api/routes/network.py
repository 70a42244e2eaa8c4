"""``/api/vms/{id}/network``: what a CLI VM may reach, read and changed live."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import Field, StrictStr

from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.schemas import ERROR_RESPONSES, RequestModel, WireModel
from hearth.control.network import NetworkPolicy
from hearth.network.egress import EgressTraffic

router = APIRouter(tags=["network"], responses=ERROR_RESPONSES)

HostPattern = Annotated[StrictStr, Field(min_length=1, max_length=300)]
HostPatterns = Annotated[list[HostPattern], Field(max_length=256)]


class NetworkIn(RequestModel):
    """``PUT``: hosts added to the VM's providers' (``allowOut``) and removed (``denyOut``, wins);
    each ``host[:port]`` (443 by default) or ``*.suffix[:port]``."""

    allow_out: HostPatterns = Field(default_factory=list)
    deny_out: HostPatterns = Field(default_factory=list)


class TrafficOut(WireModel):
    """What the VM's path carried since the VM booted: tunnels opened, requests refused (a
    host off the policy, a private address), bytes each way. Each connection is also logged
    with the VM's id (``egress_tunnel_closed``, ``egress_denied``)."""

    tunnels: int
    refused: int
    bytes_up: int
    bytes_down: int


class NetworkOut(WireModel):
    """What the VM may reach: ``allow`` (its providers' API hosts and ``allowOut``) minus
    ``denyOut``; never a private, loopback or link-local address. And what it carried."""

    providers: list[str]
    allow_out: list[str]
    deny_out: list[str]
    allow: list[str]
    traffic: TrafficOut

    @classmethod
    def of(cls, policy: NetworkPolicy, traffic: EgressTraffic) -> NetworkOut:
        """The wire form of a policy and the path's traffic."""
        return cls(
            providers=sorted(p.value for p in policy.providers),
            allow_out=list(policy.allow_out),
            deny_out=list(policy.deny_out),
            allow=list(policy.allow),
            traffic=TrafficOut.of_record(traffic),
        )


@router.get("/api/vms/{vm_id}/network")
async def get_network(vm_id: str, key: Key, ctl: Ctl) -> NetworkOut:
    """The CLI VM's egress policy (409 for a VM without an egress path)."""
    await ctl.vms.get(vm_id, user_id=scope_of(key))
    return NetworkOut.of(ctl.networks.policy(vm_id), ctl.networks.traffic(vm_id))


@router.put("/api/vms/{vm_id}/network")
async def put_network(vm_id: str, body: NetworkIn, key: Key, ctl: Ctl) -> NetworkOut:
    """Replace ``allowOut`` and ``denyOut``; applies at once, cutting connections now denied."""
    await ctl.vms.get(vm_id, user_id=scope_of(key))
    networks = ctl.networks
    await networks.set_policy(vm_id, allow_out=body.allow_out, deny_out=body.deny_out)
    return NetworkOut.of(networks.policy(vm_id), networks.traffic(vm_id))
