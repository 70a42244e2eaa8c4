"""CliNetworks: the one way out of each CLI VM, and what it may reach.

A CLI VM has no route out (QEMU user networking with ``restrict=on``, or a network namespace
that drops what the guest starts). Each one gets an egress path on the node at boot
(``Node.open_egress``: an allowlisting CONNECT proxy and the guest forward that reaches it, as a
``guestfwd`` or as NAT in the VM's namespace), which is all the guest can dial; a process that
ignores the proxy settings gets nothing. What the path lets through is, by default, the API hosts
of the providers whose credentials were delivered into the VM (``hearth.network.provider_hosts``;
for ``oidc`` the configured issuer, where the VM's agent refreshes the document), nothing before
the first delivery; ``allowOut`` adds hosts and ``denyOut`` removes them (a deny wins), changed
live by ``PUT /api/vms/{id}/network``. Never a private, loopback or link-local
address, whatever a name resolves to: the proxy checks every address it dials.

The path's node port and the policy are kept in the store (``vm_egress``), written before a
change is reported: the VM's QEMU dials that port for as long as it runs, so a restarted
controller reopens each adopted CLI VM's path on the same port with the same policy
(:meth:`CliNetworks.reopen`). Its traffic counts start again from zero.

Every change of one VM's path or policy (open, a ``PUT``, a credential's provider opened or
closed, suspend, close) holds that VM's lock from reading the policy to storing it, so two
changes never interleave: a change the store refuses is undone without undoing another, and
what is enforced is what is stored. The lock is held only across this module's own awaits (the
store's write, the proxy's start or stop), never across a caller's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from hearth.config import Settings
from hearth.errors import Conflict, HearthError
from hearth.keyed_locks import KeyedLocks
from hearth.logging import get_logger
from hearth.network.allowlist import url_target
from hearth.network.egress import EgressTraffic
from hearth.network.provider_hosts import PROVIDER_API_HOSTS
from hearth.node.egress import EgressPath
from hearth.node.interface import Node
from hearth.store import Store
from hearth.store.records import EgressRecord
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
    # The hosts each provider's credential opens (this controller's ``provider_hosts``).
    provider_hosts: Mapping[Provider, tuple[str, ...]] = field(
        default_factory=lambda: PROVIDER_API_HOSTS
    )

    @property
    def allow(self) -> tuple[str, ...]:
        """The allowlist the proxy enforces (before the denylist)."""
        hosts = [
            host for provider in sorted(self.providers) for host in self.provider_hosts[provider]
        ]
        return tuple(dict.fromkeys([*hosts, *self.allow_out]))


def provider_hosts(settings: Settings) -> dict[Provider, tuple[str, ...]]:
    """What each provider's credential opens to a CLI VM: its CLI's API hosts, and for ``oidc``
    the configured issuer (``host:port``), where the agent refreshes the document (one that
    guests reach through ``HEARTH_OIDC_UPSTREAM_PORT`` is pinned to the host's end of that
    forward: ``Settings.egress_pins``)."""
    hosts = dict(PROVIDER_API_HOSTS)
    if settings.oidc_issuer:
        hosts[Provider.OIDC] = (url_target(settings.oidc_issuer),)
    return hosts


class CliNetworks:
    """The egress path and policy of every running CLI VM of this controller."""

    def __init__(
        self,
        *,
        node: Node,
        store: Store,
        hosts: Mapping[Provider, tuple[str, ...]] = PROVIDER_API_HOSTS,
    ) -> None:
        self.node = node
        self.store = store
        self.hosts = hosts
        self._paths: dict[str, EgressPath] = {}
        self._policies: dict[str, NetworkPolicy] = {}
        # One change of a VM's path or policy at a time.
        self._locks = KeyedLocks()

    async def open(self, vm_id: str) -> GuestForward:
        """Open the VM's path, with the policy stored for it (a VM woken from hibernation goes
        on with its providers, ``allowOut`` and ``denyOut``), else with nothing allowed yet;
        the forward its spec must carry. If the store refuses the new port, the path is closed
        and the error raised, and the stored policy stays as it was for the next wake."""
        async with self._locks.held(vm_id):
            stored = await self.store.egress.get(vm_id)
            policy = (
                NetworkPolicy(provider_hosts=self.hosts) if stored is None else self._of(stored)
            )
            path = await self.node.open_egress(policy.allow, deny=policy.deny_out, owner=vm_id)
            try:
                await self._save(vm_id, path, policy)
            except BaseException as exc:
                await path.close()
                _log.warning(
                    "cli_egress_open_failed",
                    vm_id=vm_id,
                    stored_policy_kept=stored is not None,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
                raise
            self._paths[vm_id], self._policies[vm_id] = path, policy
        _log.info("cli_egress_opened", vm_id=vm_id, port=path.port)
        return path.forward

    async def reopen(self, vm_id: str) -> str | None:
        """Reopen the stored path of a running VM this controller adopts, on the port its VMM
        dials and with its policy; None when done (or it has none), else why it could not
        (the port is taken)."""
        async with self._locks.held(vm_id):
            stored = await self.store.egress.get(vm_id)
            if stored is None:
                return None
            policy = self._of(stored)
            try:
                path = await self.node.open_egress(
                    policy.allow, deny=policy.deny_out, owner=vm_id, port=stored.port
                )
            except (OSError, HearthError) as exc:
                port = stored.port
                _log.warning("cli_egress_reopen_failed", vm_id=vm_id, port=port, error=str(exc))
                detail = exc.message if isinstance(exc, HearthError) else str(exc)
                return f"its egress proxy could not listen on port {port} again: {detail}"
            self._paths[vm_id], self._policies[vm_id] = path, policy
        _log.info("cli_egress_reopened", vm_id=vm_id, port=path.port)
        return None

    def _of(self, stored: EgressRecord) -> NetworkPolicy:
        """The policy a stored path records."""
        return NetworkPolicy(
            set(stored.providers), stored.allow_out, stored.deny_out, provider_hosts=self.hosts
        )

    async def forget_others(self, keep: set[str]) -> None:
        """Drop the stored paths of every VM but ``keep`` (those a restart adopted, and the
        hibernated ones, whose policy their wake opens again)."""
        forgotten = await self.store.egress.delete_except(keep)
        if forgotten:
            _log.info("cli_egress_forgotten", count=forgotten)

    async def close(self, vm_id: str) -> None:
        """The VM is gone: close its path and forget its policy; nothing to do if it has none."""
        async with self._locks.held(vm_id):
            try:
                await self._drop(vm_id)
            finally:
                await self.store.egress.delete(vm_id)

    async def suspend(self, vm_id: str) -> None:
        """The VM stopped running but goes on (hibernated): close its path and keep its
        stored policy, which ``open`` takes up again at its wake."""
        async with self._locks.held(vm_id):
            await self._drop(vm_id)

    async def _drop(self, vm_id: str) -> None:
        path = self._paths.pop(vm_id, None)
        self._policies.pop(vm_id, None)
        if path is not None:
            await path.close()

    async def close_all(self) -> None:
        """Stop every path's proxy (the controller stops); the stored paths stay for the VMs
        that go on running, to be reopened by the next controller. Takes no VM's lock: a
        change still storing finds its path gone and leaves it gone."""
        paths, self._paths = self._paths, {}
        self._policies.clear()
        for path in paths.values():
            await path.close()

    def has_path(self, vm_id: str) -> bool:
        """Whether the VM has a way out through this controller."""
        return vm_id in self._paths

    def proxy_url(self, vm_id: str) -> str | None:
        """The proxy URL the guest reaches its path at; None if the VM has none."""
        path = self._paths.get(vm_id)
        return None if path is None else path.guest_url

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
                f"VM {vm_id} has no egress path: only CLI VMs booted with "
                "HEARTH_CLI_EGRESS=proxy have one"
            )
        return policy

    def traffic(self, vm_id: str) -> EgressTraffic:
        """What the VM's path carried since it (re)opened; Conflict if it has no path."""
        self.policy(vm_id)
        return self._paths[vm_id].proxy.traffic

    async def set_policy(
        self, vm_id: str, *, allow_out: Sequence[str], deny_out: Sequence[str]
    ) -> int:
        """Replace the VM's own additions and removals (InvalidInput, changing nothing, for a
        bad entry); the open connections it no longer allows are cut (their count returned)."""
        async with self._locks.held(vm_id):
            policy = self.policy(vm_id)
            wanted = replace(policy, allow_out=tuple(allow_out), deny_out=tuple(deny_out))
            cut = await self._apply(vm_id, policy, wanted)
        _log.info(
            "cli_egress_policy_set",
            vm_id=vm_id,
            allow_out=list(wanted.allow_out),
            deny_out=list(wanted.deny_out),
            cut=cut,
        )
        return cut

    async def allow_provider(self, vm_id: str, provider: Provider) -> None:
        """A credential of ``provider`` was delivered into the VM: let it reach that API."""
        async with self._locks.held(vm_id):
            policy = self._policies.get(vm_id)
            if policy is None or provider in policy.providers:
                return
            wanted = replace(policy, providers=policy.providers | {provider})
            await self._apply(vm_id, policy, wanted)
        _log.info("cli_egress_provider_allowed", vm_id=vm_id, provider=provider.value)

    async def forbid_provider(self, vm_id: str, provider: Provider) -> None:
        """The VM no longer holds a credential of ``provider``: close that API to it (hosts
        the VM's ``allowOut`` names stay open)."""
        async with self._locks.held(vm_id):
            policy = self._policies.get(vm_id)
            if policy is None or provider not in policy.providers:
                return
            wanted = replace(policy, providers=policy.providers - {provider})
            await self._apply(vm_id, policy, wanted)
        _log.info("cli_egress_provider_closed", vm_id=vm_id, provider=provider.value)

    async def _apply(self, vm_id: str, before: NetworkPolicy, wanted: NetworkPolicy) -> int:
        """Enforce ``wanted`` (the proxy checks it), then store it; the enforced policy goes
        back to ``before`` if the store refuses, so the store never lags what is enforced. The
        caller holds the VM's lock, taken before it read ``before``."""
        path = self._paths[vm_id]
        cut = path.set_policy(wanted.allow, wanted.deny_out)
        self._policies[vm_id] = wanted
        try:
            await self._save(vm_id, path, wanted)
        except BaseException:
            path.set_policy(before.allow, before.deny_out)
            if self._paths.get(vm_id) is path:  # not closed meanwhile (close_all)
                self._policies[vm_id] = before
            raise
        return cut

    async def _save(self, vm_id: str, path: EgressPath, policy: NetworkPolicy) -> None:
        await self.store.egress.put(
            EgressRecord(
                vm_id=vm_id,
                port=path.port,
                providers=frozenset(policy.providers),
                allow_out=policy.allow_out,
                deny_out=policy.deny_out,
            )
        )
