"""One network namespace per VM: veth to the root namespace, a tap for the VM, nftables policy.

Inside every namespace the VM sees the same fixed link (tap 10.0.2.2/24, guest 10.0.2.15), so a
VM restored from a template keeps the address it was saved with. The root namespace never routes
to that inner link: the controller reaches the agent at the slot's own link-local address, which
the namespace DNATs to the guest's agent port. Everything the guest starts itself is dropped, so it
reaches neither other VMs, nor the host, nor the controller's API.
"""

from __future__ import annotations

from dataclasses import dataclass

from hearth.errors import VmError
from hearth.network.pool import SlotAddresses
from hearth.tools import run_tool

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


def _policy(slot: SlotAddresses) -> str:
    return f"""
table inet hearth {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{NS_VETH}" ip daddr {slot.agent_ip} tcp dport {AGENT_PORT} \\
      dnat ip to {GUEST_IP}:{AGENT_PORT}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "{NS_VETH}" oifname "{TAP_NAME}" ip daddr {GUEST_IP} tcp dport {AGENT_PORT} \\
      ct state new accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
  }}
}}
"""


def create_namespace(vm_id: str, slot: SlotAddresses) -> NetworkSlot:
    """Create the namespace, veth pair, tap and policy for ``vm_id`` on ``slot``."""
    netns, host_veth = names_for(vm_id)
    network = NetworkSlot(netns=netns, host_veth=host_veth, slot=slot)
    try:
        _ip("netns", "add", netns)
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
        run_tool(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"],
            what="load the VM namespace policy",
            error=VmError,
            input_bytes=_policy(slot).encode(),
        )
    except BaseException:
        delete_namespace(network)
        raise
    return network


def delete_namespace(network: NetworkSlot) -> None:
    """Remove the namespace (taking its tap and veth end with it) and the root-side veth."""
    run_tool(["ip", "netns", "del", network.netns], what="delete netns", error=VmError, check=False)
    run_tool(
        ["ip", "link", "del", network.host_veth], what="delete veth", error=VmError, check=False
    )


def list_namespaces() -> list[str]:
    """Names of the network namespaces Hearth created (``hearth-*``)."""
    proc = run_tool(["ip", "netns", "list"], what="list netns", error=VmError, check=False)
    return [
        line.split()[0] for line in proc.stdout.decode().splitlines() if line.startswith("hearth-")
    ]
