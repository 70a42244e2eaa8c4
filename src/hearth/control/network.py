"""CliNetworks: the one way out of each CLI VM, and what it may reach.

A CLI VM runs on QEMU user networking with ``restrict=on``: it has no route out. Each one gets an
egress path on the node at boot (``Node.open_egress``: an allowlisting CONNECT proxy and the
guest forward that reaches it), which is all the guest can dial; a process that ignores the
proxy settings gets nothing. What the path lets through is, by default, the API hosts of the
providers whose credentials were delivered into the VM (``hearth.network.provider_hosts``),
nothing before the first delivery; ``allowOut`` adds hosts and ``denyOut`` removes them (a deny
wins), changed live by ``PUT /api/vms/{id}/network``. Never a private, loopback or link-local
address, whatever a name resolves to: the proxy checks every address it dials.

The policy is held in memory for the VM's life: a controller restart reopens no path (adopted CLI
VMs have no way out until they are re-created; see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hearth.errors import Conflict
from hearth.logging import get_logger
from hearth.network.egress import EgressTraffic
from hearth.network.provider_hosts import PROVIDER_API_HOSTS
from hearth.node.egress import EgressPath
from hearth.node.interface import Node
from hearth.vm.types import GuestForward
from hearth_agent.wire import Provider

_log = get_logger("control.network")
# The loopback names a command in the VM reaches without the proxy (its own agent, say).
_NO_PROXY = "localhost,127.0.0.1,::1"


@dataclass
class NetworkPolicy:
    """What one CLI VM may reach: its providers' API hosts and ``allow_out``, not ``deny_out``."""

    providers: set[Provider] = field(default_factory=set)
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    @property
    def allow(self) -> tuple[str, ...]:
        """The allowlist the proxy enforces (before the denylist)."""
        hosts = [
            host for provider in sorted(self.providers) for host in PROVIDER_API_HOSTS[provider]
        ]
        return tuple(dict.fromkeys([*hosts, *self.allow_out]))


class CliNetworks:
    """The egress path and policy of every running CLI VM of this controller."""

    def __init__(self, *, node: Node) -> None:
        self.node = node
        self._paths: dict[str, EgressPath] = {}
        self._policies: dict[str, NetworkPolicy] = {}

    async def open(self, vm_id: str) -> GuestForward:
        """Open the VM's path (nothing allowed yet); the forward its spec must carry."""
        path = await self.node.open_egress((), owner=vm_id)
        self._paths[vm_id] = path
        self._policies[vm_id] = NetworkPolicy()
        _log.info("cli_egress_opened", vm_id=vm_id, port=path.port)
        return path.forward

    async def close(self, vm_id: str) -> None:
        """Close the VM's path and forget its policy; nothing to do if it has none."""
        path = self._paths.pop(vm_id, None)
        self._policies.pop(vm_id, None)
        if path is not None:
            await path.close()

    async def close_all(self) -> None:
        """Close every path (the controller stops)."""
        for vm_id in list(self._paths):
            await self.close(vm_id)

    def has_path(self, vm_id: str) -> bool:
        """Whether the VM has a way out through this controller."""
        return vm_id in self._paths

    def proxy_env(self, vm_id: str) -> dict[str, str]:
        """The environment that sends a command's HTTP(S) through the VM's path; empty if none."""
        path = self._paths.get(vm_id)
        if path is None:
            return {}
        env = {}
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
            env[name] = path.guest_url
        env["NO_PROXY"] = env["no_proxy"] = _NO_PROXY
        return env

    def policy(self, vm_id: str) -> NetworkPolicy:
        """The VM's policy; Conflict if it has no path."""
        policy = self._policies.get(vm_id)
        if policy is None:
            raise Conflict(
                f"VM {vm_id} has no egress path: only CLI VMs on user networking booted by this "
                "controller with HEARTH_CLI_EGRESS=proxy have one"
            )
        return policy

    def traffic(self, vm_id: str) -> EgressTraffic:
        """What the VM's path carried since it opened; Conflict if it has no path."""
        self.policy(vm_id)
        return self._paths[vm_id].proxy.traffic

    def set_policy(self, vm_id: str, *, allow_out: Sequence[str], deny_out: Sequence[str]) -> int:
        """Replace the VM's own additions and removals (InvalidInput, changing nothing, for a
        bad entry); the open connections it no longer allows are cut (their count returned)."""
        policy = self.policy(vm_id)
        wanted = NetworkPolicy(
            providers=set(policy.providers), allow_out=tuple(allow_out), deny_out=tuple(deny_out)
        )
        cut = self._paths[vm_id].set_policy(wanted.allow, wanted.deny_out)
        self._policies[vm_id] = wanted
        _log.info(
            "cli_egress_policy_set",
            vm_id=vm_id,
            allow_out=list(wanted.allow_out),
            deny_out=list(wanted.deny_out),
            cut=cut,
        )
        return cut

    def allow_provider(self, vm_id: str, provider: Provider) -> None:
        """A credential of ``provider`` was delivered into the VM: let it reach that API."""
        policy = self._policies.get(vm_id)
        if policy is None or provider in policy.providers:
            return
        policy.providers.add(provider)
        self._paths[vm_id].set_policy(policy.allow, policy.deny_out)
        _log.info("cli_egress_provider_allowed", vm_id=vm_id, provider=provider.value)
