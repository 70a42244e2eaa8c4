"""One network namespace per VM: veth to the root namespace, a tap for the VM, nftables policy.

Inside every namespace the VM sees the same fixed link (tap 10.0.2.2/24, guest 10.0.2.15), so a
VM restored from a template keeps the address it was saved with. The root namespace never routes
to that inner link: the controller reaches the agent at the slot's own link-local address, which
the namespace DNATs to the guest's agent port. Everything the guest starts itself is dropped, so it
reaches neither other VMs, nor the host, nor the controller's API.

The one exception is a guest forward (``GuestForward``, as QEMU user-net's ``guestfwd``): the guest
dialling ``guest_ip:guest_port`` reaches the node's loopback ``host_port`` and nothing else. The
namespace answers for ``guest_ip`` on the tap, DNATs that one endpoint to the slot's root-side
address and masquerades it out of the veth; the root namespace (a table of this VM's, removed
with it) DNATs exactly that to ``127.0.0.1:host_port``, which ``route_localnet`` on the VM's veth
lets through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from hearth.errors import VmError
from hearth.network.pool import SlotAddresses, SlotPool
from hearth.tools import run_tool
from hearth.vm.threads import finish_in_thread
from hearth.vm.types import GuestForward

GUEST_IP = "10.0.2.15"
TAP_GATEWAY = "10.0.2.2/24"
TAP_NAME = "tap0"
NS_VETH = "veth0"
AGENT_PORT = 8080


@dataclass(frozen=True)
class NetworkSlot:
    """A VM's namespace and addresses."""

    netns: str
    host_veth: str
    slot: SlotAddresses

    @property
    def agent_url(self) -> str:
        """Where the controller reaches the VM's agent."""
        return f"http://{self.slot.agent_ip}:{AGENT_PORT}"


def names_for(vm_id: str) -> tuple[str, str]:
    """Namespace and root-side veth names for a VM (interface names stay under 16 bytes)."""
    short = vm_id.replace("vm-", "").replace("template-", "t")[:10].replace("-", "")
    return f"hearth-{short}", f"hv{short}"[:15]


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    run_tool(argv, what=f"ip {' '.join(args[:3])}", error=VmError, timeout=30)


def _policy(slot: SlotAddresses, forwards: tuple[GuestForward, ...]) -> str:
    dnat = "".join(
        f"""
    iifname "{TAP_NAME}" ip daddr {f.guest_ip} tcp dport {f.guest_port} \\
      dnat ip to {slot.host_ip}:{f.host_port}"""
        for f in forwards
    )
    accept = "".join(
        f"""
    iifname "{TAP_NAME}" oifname "{NS_VETH}" ip daddr {slot.host_ip} tcp dport {f.host_port} \\
      ct original ip daddr {f.guest_ip} ct original proto-dst {f.guest_port} \\
      ct state new accept"""
        for f in forwards
    )
    return f"""
table inet hearth {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{NS_VETH}" ip daddr {slot.agent_ip} tcp dport {AGENT_PORT} \\
      dnat ip to {GUEST_IP}:{AGENT_PORT}{dnat}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{NS_VETH}" ip saddr {GUEST_IP} masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "{NS_VETH}" oifname "{TAP_NAME}" ip daddr {GUEST_IP} tcp dport {AGENT_PORT} \\
      ct state new accept{accept}
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
  }}
}}
"""


def _root_table(network: NetworkSlot) -> str:
    """The root namespace's nftables table of this VM (its forwards to loopback)."""
    return f"hearth_{network.netns.removeprefix('hearth-')}"


def _root_policy(network: NetworkSlot, forwards: tuple[GuestForward, ...]) -> str:
    rules = "".join(
        f"""
    iifname "{network.host_veth}" ip daddr {network.slot.host_ip} tcp dport {f.host_port} \\
      dnat ip to 127.0.0.1:{f.host_port}"""
        for f in forwards
    )
    return f"""
table ip {_root_table(network)} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;{rules}
  }}
}}
"""


def create_namespace(
    vm_id: str, slot: SlotAddresses, forwards: tuple[GuestForward, ...] = ()
) -> NetworkSlot:
    """Create the namespace, veth pair, tap and policy for ``vm_id`` on ``slot``, with the
    guest ``forwards`` to the node's loopback."""
    netns, host_veth = names_for(vm_id)
    network = NetworkSlot(netns=netns, host_veth=host_veth, slot=slot)
    # A name that exists is another VM's (the names keep 36 bits of the id): refused, and left
    # alone, never taken down as this one's leftovers.
    _ip("netns", "add", netns)
    try:
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", NS_VETH, "netns", netns)
        _ip("addr", "add", f"{slot.host_ip}/{slot.prefix}", "dev", host_veth)
        _ip("link", "set", host_veth, "up")
        _ip("addr", "add", f"{slot.agent_ip}/{slot.prefix}", "dev", NS_VETH, netns=netns)
        _ip("link", "set", NS_VETH, "up", netns=netns)
        _ip("tuntap", "add", TAP_NAME, "mode", "tap", netns=netns)
        _ip("addr", "add", TAP_GATEWAY, "dev", TAP_NAME, netns=netns)
        _ip("link", "set", TAP_NAME, "up", netns=netns)
        run_tool(
            ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            what="enable forwarding in the VM namespace",
            error=VmError,
        )
        for guest_ip in sorted({f.guest_ip for f in forwards}):
            _ip("addr", "add", f"{guest_ip}/32", "dev", TAP_NAME, netns=netns)
        run_tool(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"],
            what="load the VM namespace policy",
            error=VmError,
            input_bytes=_policy(slot, forwards).encode(),
        )
        if forwards:
            _forward_to_loopback(network, forwards)
    except BaseException:
        delete_namespace(network)
        raise
    return network


def _forward_to_loopback(network: NetworkSlot, forwards: tuple[GuestForward, ...]) -> None:
    """The root namespace's half of the forwards: the VM's veth may carry packets to loopback,
    and exactly the forwarded endpoints are DNATed there."""
    run_tool(
        ["sysctl", "-q", "-w", f"net.ipv4.conf.{network.host_veth}.route_localnet=1"],
        what="let the VM's veth reach loopback forwards",
        error=VmError,
    )
    run_tool(
        ["nft", "-f", "-"],
        what="load the VM's loopback forwards",
        error=VmError,
        input_bytes=_root_policy(network, forwards).encode(),
    )


def delete_namespace(network: NetworkSlot) -> None:
    """Remove the namespace (taking its tap and veth end with it), the root-side veth and the
    VM's root-namespace table (if it has forwards)."""
    run_tool(["ip", "netns", "del", network.netns], what="delete netns", error=VmError, check=False)
    run_tool(
        ["nft", "delete", "table", "ip", _root_table(network)],
        what="delete the VM's loopback forwards",
        error=VmError,
        check=False,
    )
    run_tool(
        ["ip", "link", "del", network.host_veth], what="delete veth", error=VmError, check=False
    )


async def open_namespace(
    pool: SlotPool,
    vm_id: str,
    forwards: tuple[GuestForward, ...] = (),
    *,
    then: Callable[[NetworkSlot], None] | None = None,
) -> NetworkSlot:
    """Claim a slot of ``pool`` for ``vm_id`` and create its namespace on it, followed by
    ``then`` (more set-up of it), in a worker thread: the ~15 ``ip``/``nft`` runs never hold up
    the event loop. If that fails, or the caller is cancelled meanwhile, neither the slot nor the
    namespace stays (a cancelled caller waits for the thread to end)."""
    slot = pool.claim(vm_id)
    try:
        return await finish_in_thread(
            functools.partial(_create_then, vm_id, slot, forwards, then), undo=delete_namespace
        )
    except BaseException:
        pool.release(slot.index, vm_id)
        raise


def _create_then(
    vm_id: str,
    slot: SlotAddresses,
    forwards: tuple[GuestForward, ...],
    then: Callable[[NetworkSlot], None] | None,
) -> NetworkSlot:
    network = create_namespace(vm_id, slot, forwards)
    if then is not None:
        try:
            then(network)
        except BaseException:
            delete_namespace(network)
            raise
    return network


async def close_namespace(pool: SlotPool, network: NetworkSlot, owner: str) -> None:
    """Delete ``network``'s namespace and free its slot if ``owner`` holds it, in a worker
    thread that runs to its end even when the caller is cancelled meanwhile."""
    await finish_in_thread(functools.partial(_delete_and_release, pool, network, owner))


def _delete_and_release(pool: SlotPool, network: NetworkSlot, owner: str) -> None:
    delete_namespace(network)
    pool.release(network.slot.index, owner)


def list_namespaces() -> list[str]:
    """Names of the network namespaces Hearth created (``hearth-*``)."""
    proc = run_tool(["ip", "netns", "list"], what="list netns", error=VmError, check=False)
    return [
        line.split()[0] for line in proc.stdout.decode().splitlines() if line.startswith("hearth-")
    ]
