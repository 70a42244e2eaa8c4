"""Egress paths: how a VM on this node reaches the hosts it may reach, and nothing else.

A path is an ``EgressProxy`` (``hearth.network.egress``: an allowlist, never a private address)
listening on the node's loopback, and the guest-visible endpoint the VM's network forwards to it.
The Browser VM's image starts Chromium with ``EGRESS_PROXY_URL`` as its proxy
(``images/guest/hearth-browser``), and the agent gives it to a vendor CLI as ``HTTPS_PROXY``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hearth.closing import Closing
from hearth.metrics import ControllerMetrics
from hearth.network.egress import EgressProxy
from hearth.vm.types import GuestForward

# Where a VM finds its egress proxy: an address in QEMU user-net's own subnet (10.0.2.0/24),
# which a guestfwd connects to the proxy's loopback port.
EGRESS_GUEST_IP = "10.0.2.101"
EGRESS_GUEST_PORT = 3128
EGRESS_PROXY_URL = f"http://{EGRESS_GUEST_IP}:{EGRESS_GUEST_PORT}"


@dataclass(frozen=True)
class EgressPath(Closing):
    """One VM's way out: the proxy on the node, and what the VM's network must carry to it."""

    proxy: EgressProxy
    forward: GuestForward  # the VM's guest-visible endpoint → the proxy's loopback port
    guest_url: str = EGRESS_PROXY_URL  # the proxy as the VM sees it (HTTPS_PROXY)

    @property
    def port(self) -> int:
        """The proxy's loopback port on the node."""
        return self.proxy.port

    def set_policy(self, allow: Sequence[str], deny: Sequence[str] = ()) -> int:
        """Change what the VM may reach, at once; the open tunnels it may no longer use are cut
        (their count is returned). InvalidInput, changing nothing, for a bad entry."""
        return self.proxy.set_policy(allow, deny)

    async def close(self) -> None:
        """Stop the proxy and drop its tunnels; idempotent."""
        await self.proxy.close()


async def open_egress_path(
    allow: Sequence[str],
    *,
    deny: Sequence[str] = (),
    owner: str | None = None,
    port: int = 0,
    pins: Mapping[str, str],
    metrics: ControllerMetrics,
) -> EgressPath:
    """Start a proxy on loopback ``port`` (0: any) that tunnels only to ``allow`` minus
    ``deny`` (``pins``: names resolved to fixed addresses, for tests' stand-ins; ``owner``: the
    VM or login named in its logs) and the guest forward that reaches it."""
    proxy = EgressProxy(allow, deny=deny, owner=owner, port=port, pins=dict(pins), metrics=metrics)
    await proxy.start()
    forward = GuestForward(
        guest_ip=EGRESS_GUEST_IP, guest_port=EGRESS_GUEST_PORT, host_port=proxy.port
    )
    return EgressPath(proxy=proxy, forward=forward)
