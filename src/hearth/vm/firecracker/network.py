"""A Firecracker VM's network: a tap inside its own network namespace, reached through a veth.

Clones restored from one template wake with the template's guest address and MAC, so every VM
gets its own netns and the guest-side identity is the same everywhere (Firecracker's
"network for clones" recipe). Inside the netns, the tap carries ``GUEST_GATEWAY``; a veth pair
joins the netns to the host, and a DNAT rule sends the agent port arriving on the veth to the
guest. The controller reaches the agent at the netns end of the veth (``agent_host``).

``NetworkProvider`` is what the backend needs; ``NetnsNetworks`` implements it with ``ip`` and
``iptables`` (only the real-binary tests use it until Hearth's own network module exists).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from hearth.errors import VmError
from hearth.logging import get_logger
from hearth.tools import run_tool

NETNS_DIR = Path("/var/run/netns")
AGENT_PORT = 8080
# The guest-side identity, identical in every VM (and baked into templates).
GUEST_IP = "172.16.0.2"
GUEST_GATEWAY = "172.16.0.1"
GUEST_PREFIX = 30
GUEST_MAC = "06:00:ac:10:00:02"
TAP_NAME = "tap0"
GUEST_IDENTITY = (GUEST_MAC, GUEST_IP, GUEST_GATEWAY, GUEST_PREFIX)
_log = get_logger("vm.firecracker.network")


@dataclass(frozen=True, kw_only=True)
class FirecrackerNetwork:
    """Where one VM's network lives and how the controller reaches its agent."""

    netns: str
    agent_host: str  # host-side address of the agent (DNAT'ed to GUEST_IP inside the netns)
    tap: str = TAP_NAME
    guest_mac: str = GUEST_MAC
    guest_ip: str = GUEST_IP
    gateway: str = GUEST_GATEWAY
    prefix_len: int = GUEST_PREFIX
    agent_port: int = AGENT_PORT
    host_veth: str | None = None  # the veth end in the host namespace, when one was created

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


class NetworkProvider(Protocol):
    """Hands out and takes back per-VM networks."""

    async def acquire(self, vm_id: str, *, allow_egress: bool) -> FirecrackerNetwork:
        """A ready network (netns with its tap) for ``vm_id``."""
        ...

    async def release(self, network: FirecrackerNetwork) -> None:
        """Delete what ``acquire`` created; idempotent."""
        ...


class NetnsNetworks:
    """Creates a netns + tap + veth + DNAT per VM with ``ip`` and ``iptables`` (needs root)."""

    def __init__(
        self,
        *,
        link_pool: str = "10.200.0.0/16",
        prefix: str = "hfc",
        tap_owner: tuple[int, int] | None = None,
    ) -> None:
        self.links = list(ipaddress.IPv4Network(link_pool).subnets(new_prefix=30))
        self.prefix = prefix
        self.tap_owner = tap_owner  # uid, gid of a jailed Firecracker, which must open the tap
        self._lock = asyncio.Lock()

    async def acquire(self, vm_id: str, *, allow_egress: bool) -> FirecrackerNetwork:
        """Create the netns, tap, veth pair and NAT rules of the lowest free slot."""
        async with self._lock:
            index = next(
                (i for i in range(len(self.links)) if not (NETNS_DIR / self._netns(i)).exists()),
                None,
            )
            if index is None:
                raise VmError("no free network slot for a firecracker VM")
            link = self.links[index]
            host_ip, ns_ip = (str(a) for a in list(link.hosts())[:2])
            network = FirecrackerNetwork(
                netns=self._netns(index), agent_host=ns_ip, host_veth=f"{self.prefix}{index}h"
            )
            try:
                await asyncio.to_thread(
                    _create, network, host_ip=host_ip, ns_ip=ns_ip, index=index,
                    prefix=self.prefix, allow_egress=allow_egress, tap_owner=self.tap_owner,
                )  # fmt: skip
            except BaseException:
                await self.release(network)
                raise
        _log.info("network_created", vm_id=vm_id, netns=network.netns, agent_host=ns_ip)
        return network

    async def release(self, network: FirecrackerNetwork) -> None:
        """Delete the veth (its peer goes with it) and the netns (the tap goes with it)."""
        await asyncio.to_thread(delete_network, network)

    def _netns(self, index: int) -> str:
        return f"{self.prefix}-{index}"


def _ip(*args: str) -> None:
    run_tool(["ip", *args], what=f"ip {' '.join(args[:4])}", error=VmError, timeout=30)


def _in_netns(netns: str, *args: str) -> None:
    run_tool(
        ["ip", "netns", "exec", netns, *args],
        what=f"{args[0]} in {netns}",
        error=VmError,
        timeout=30,
    )


def _create(
    network: FirecrackerNetwork,
    *,
    host_ip: str,
    ns_ip: str,
    index: int,
    prefix: str,
    allow_egress: bool,
    tap_owner: tuple[int, int] | None,
) -> None:
    ns, tap = network.netns, network.tap
    host_veth = network.host_veth or f"{prefix}{index}h"
    ns_veth = f"{prefix}{index}n"
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    owner = ["user", str(tap_owner[0]), "group", str(tap_owner[1])] if tap_owner else []
    _ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", *owner)
    _ip("-n", ns, "addr", "add", f"{network.gateway}/{network.prefix_len}", "dev", tap)
    _ip("-n", ns, "link", "set", tap, "up")
    _ip("link", "add", host_veth, "type", "veth", "peer", "name", ns_veth, "netns", ns)
    _ip("addr", "add", f"{host_ip}/30", "dev", host_veth)
    _ip("link", "set", host_veth, "up")
    _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_veth)
    _ip("-n", ns, "link", "set", ns_veth, "up")
    _ip("-n", ns, "route", "add", "default", "via", host_ip)
    _in_netns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _in_netns(
        ns, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", ns_veth, "-p", "tcp",
        "--dport", str(network.agent_port), "-j", "DNAT",
        "--to-destination", f"{network.guest_ip}:{network.agent_port}",
    )  # fmt: skip
    if allow_egress:
        _in_netns(
            ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", ns_veth, "-j", "MASQUERADE"
        )
    else:
        # The guest may answer but not open connections: nothing it starts leaves the netns.
        _in_netns(
            ns, "iptables", "-A", "FORWARD", "-i", tap, "-m", "conntrack",
            "--ctstate", "NEW", "-j", "DROP",
        )  # fmt: skip


def delete_network(network: FirecrackerNetwork) -> None:
    """Delete a network created by ``NetnsNetworks``; quiet about parts already gone."""
    if network.host_veth and Path(f"/sys/class/net/{network.host_veth}").exists():
        _ip("link", "del", network.host_veth)
    if network.netns_path.exists():
        _ip("netns", "del", network.netns)
