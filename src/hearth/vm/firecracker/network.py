"""A Firecracker VM's network: the tap inside its own namespace, as ``hearth.network`` makes it.

Clones restored from one template wake with the template's guest address and MAC, so every VM
gets its own netns and the guest-side identity is the same everywhere (Firecracker's "network
for clones" recipe). ``hearth.network`` builds exactly that for both backends: inside each
namespace the tap carries the fixed inner link (gateway 10.0.2.2/24, guest 10.0.2.15); a veth
pair joins it to the root namespace on a /30 slot of the ``SlotPool``, and the namespace's
nftables policy DNATs the slot's agent address to the guest's agent port and drops everything
the guest starts. The controller reaches the agent at that agent address (``agent_host``).

``NetworkProvider`` is what the backend needs; ``SlotNetworks`` is the real one, an adapter over
``SlotPool`` and ``open_namespace``/``close_namespace``. Tests of other code inject fakes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from hearth.errors import InvalidInput, VmError
from hearth.logging import get_logger
from hearth.network.namespace import (
    AGENT_PORT,
    GUEST_IP,
    TAP_GATEWAY,
    TAP_NAME,
    NetworkSlot,
    close_namespace,
    names_for,
    open_namespace,
)
from hearth.network.pool import SlotPool
from hearth.tools import run_tool
from hearth.vm.types import GuestForward

NETNS_DIR = Path("/var/run/netns")
_INNER_LINK = ipaddress.IPv4Interface(TAP_GATEWAY)
# The guest-side identity, identical in every VM (and baked into templates). The MAC follows
# Firecracker's convention of 06:00 followed by the guest's IPv4 address.
GUEST_GATEWAY = str(_INNER_LINK.ip)
GUEST_PREFIX = _INNER_LINK.network.prefixlen
GUEST_MAC = "06:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(GUEST_IP).packed)
GUEST_IDENTITY = (GUEST_MAC, GUEST_IP, GUEST_GATEWAY, GUEST_PREFIX)
_log = get_logger("vm.firecracker.network")


@dataclass(frozen=True, kw_only=True)
class FirecrackerNetwork:
    """Where one VM's network lives and how the controller reaches its agent."""

    netns: str
    agent_host: str  # root-namespace-reachable address of the agent (DNAT'ed to guest_ip)
    tap: str = TAP_NAME
    guest_mac: str = GUEST_MAC
    guest_ip: str = GUEST_IP
    gateway: str = GUEST_GATEWAY
    prefix_len: int = GUEST_PREFIX
    agent_port: int = AGENT_PORT
    host_veth: str | None = None  # the veth end in the root namespace, when one was created
    slot: int | None = None  # the SlotPool index the network occupies, when it came from one
    owner: str | None = None  # whom the slot is claimed for (the VM id); release checks it

    @property
    def netns_path(self) -> Path:
        """The netns handle (``--netns`` for the jailer)."""
        return NETNS_DIR / self.netns

    @property
    def guest_cidr(self) -> str:
        """The guest's address with its prefix, for the kernel command line."""
        return f"{self.guest_ip}/{self.prefix_len}"

    @property
    def agent_url(self) -> str:
        """The agent's base URL as the controller sees it."""
        return f"http://{self.agent_host}:{self.agent_port}"

    @property
    def guest_identity(self) -> tuple[str, str, str, int]:
        """What a template bakes in and its clones must share: MAC, address, gateway, prefix."""
        return (self.guest_mac, self.guest_ip, self.gateway, self.prefix_len)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the VM's record."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FirecrackerNetwork:
        """The inverse of ``to_dict``."""
        return cls(**data)

    @classmethod
    def from_slot(cls, network: NetworkSlot, *, owner: str) -> FirecrackerNetwork:
        """The Firecracker view of a namespace ``hearth.network`` created for ``owner``."""
        return cls(
            netns=network.netns,
            agent_host=network.slot.agent_ip,
            host_veth=network.host_veth,
            slot=network.slot.index,
            owner=owner,
        )


class NetworkProvider(Protocol):
    """Hands out and takes back per-VM networks."""

    async def acquire(
        self, vm_id: str, *, allow_egress: bool, forwards: tuple[GuestForward, ...] = ()
    ) -> FirecrackerNetwork:
        """A ready network (netns with its tap) for ``vm_id``, with its guest ``forwards`` to
        the node's loopback."""
        ...

    async def release(self, network: FirecrackerNetwork) -> None:
        """Delete what ``acquire`` created; idempotent."""
        ...

    async def reap(self, keep: set[str]) -> list[str]:
        """Release every network whose owner is not in ``keep``; returns those owners."""
        ...


class SlotNetworks:
    """Networks from ``hearth.network``: a ``SlotPool`` slot and the namespace built on it."""

    def __init__(self, *, pool: SlotPool, tap_owner: tuple[int, int] | None = None) -> None:
        self.pool = pool
        self.tap_owner = tap_owner  # uid, gid of a jailed Firecracker, which must open the tap

    async def acquire(
        self, vm_id: str, *, allow_egress: bool, forwards: tuple[GuestForward, ...] = ()
    ) -> FirecrackerNetwork:
        """Claim a slot and create the namespace, veth pair, tap and nftables policy on it."""
        if allow_egress:
            raise InvalidInput("network mode netns does not offer guest egress yet")
        owner = self.tap_owner
        hand_tap = None if owner is None else lambda net: _hand_tap_to(net.netns, *owner)
        made = await open_namespace(self.pool, vm_id, forwards, then=hand_tap)
        network = FirecrackerNetwork.from_slot(made, owner=vm_id)
        _log.info("network_created", vm_id=vm_id, netns=network.netns, slot=made.slot.index)
        return network

    async def release(self, network: FirecrackerNetwork) -> None:
        """Delete the namespace (its tap goes with it) and the veth, then free the slot."""
        if network.slot is None or network.owner is None or network.host_veth is None:
            raise VmError(f"network {network.netns} has no slot recorded: not one of ours")
        namespace = NetworkSlot(
            netns=network.netns,
            host_veth=network.host_veth,
            slot=self.pool.addresses(network.slot),
        )
        await close_namespace(self.pool, namespace, network.owner)

    async def reap(self, keep: set[str]) -> list[str]:
        """Delete the namespace and free the slot of every claim whose owner is not kept."""
        reaped = []
        for index, owner in self.pool.claims().items():
            if owner not in keep:
                netns, host_veth = names_for(owner)
                await self.release(
                    FirecrackerNetwork.from_slot(
                        NetworkSlot(
                            netns=netns, host_veth=host_veth, slot=self.pool.addresses(index)
                        ),
                        owner=owner,
                    )
                )
                reaped.append(owner)
        return reaped


def _hand_tap_to(netns: str, uid: int, gid: int) -> None:
    """Re-create the namespace's tap owned by ``uid``/``gid``, with the same inner link.

    A jailed Firecracker has dropped to that uid and may only attach to a tap it owns; the
    namespace policy names the tap, so the new one is governed by it like the old.
    """
    steps = [
        ("tuntap", "del", "dev", TAP_NAME, "mode", "tap"),
        ("tuntap", "add", "dev", TAP_NAME, "mode", "tap", "user", str(uid), "group", str(gid)),
        ("addr", "add", TAP_GATEWAY, "dev", TAP_NAME),
        ("link", "set", TAP_NAME, "up"),
    ]
    for args in steps:
        run_tool(
            ["ip", "-n", netns, *args],
            what=f"ip {' '.join(args[:2])} in {netns}",
            error=VmError,
            timeout=30,
        )
