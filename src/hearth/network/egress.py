"""An HTTP CONNECT proxy that lets a VM reach the hosts it may reach and nothing else.

A Browser VM runs on QEMU user networking with ``restrict=on``, so it has no route out. The
controller starts one :class:`EgressProxy` per Browser VM on 127.0.0.1 (random port), and QEMU's
``guestfwd`` relays a guest address (e.g. ``10.0.2.101:3128``) to it; Chromium and the vendor CLI
in the VM use that address as their HTTPS proxy. What the proxy does with each connection:

* Only ``CONNECT host:port HTTP/1.1`` is served. Plain-HTTP proxying (``GET http://...``) gets
  405; a malformed request line or header block, or a head over 8 KiB, gets 400.
* ``host:port`` must match the allowlist (:mod:`hearth.network.allowlist`: exact hosts or IP
  literals, and ``*.suffix`` wildcards, each with a port that defaults to 443) and no entry of
  the denylist (same syntax; a deny wins). Anything else gets 403 and an ``egress_denied`` log
  line. ``set_policy`` replaces both lists while the proxy runs: new requests get the new policy
  at once, and open tunnels the new policy no longer allows are cut.
* The name is resolved once (through the injected ``resolver``) and the proxy dials the resolved
  address, never the name again, so a second DNS answer cannot steer the tunnel elsewhere. At most
  ``max_lookups`` of one proxy's lookups run at once, and (with the host's resolver, the default)
  at most 4 of its ``owner``'s on threads of their own, counted until each thread returns, even
  after the proxy closed (:mod:`hearth.network.resolver`): one VM's names that never resolve hold
  neither the other VMs' lookups nor the controller's threads, however often its path reopens;
  a CONNECT waits for a place within its deadline. If any
  resolved address is not globally reachable unicast (:func:`hearth.network.addresses.
  is_public_address`: loopback, private, CGNAT, link-local, multicast, documentation, reserved,
  IPv6 ULA and site-local, or such an IPv4 address inside an IPv6 one) or is one of the node's
  own (:mod:`hearth.network.node_addresses`: any interface's, public ones too) the request gets
  403: an allowlisted name must not become a way into the host's own services (DNS rebinding).
* ``allow_private`` is the one way around the first check: exact ``ip:port`` strings
  (``127.0.0.1:8443``, ``[::1]:8443``) the proxy may dial although they are not public. It is
  for tests and for an operator's own OAuth server on a private network. It does not widen the
  allowlist (the name or IP literal the VM asks for must still be on it), nor open the node's
  own non-loopback addresses.
* ``pins`` map an allowlisted ``host:port`` to the exact ``ip:port`` to dial instead of resolving
  it (like curl's ``--resolve``): for an operator's split-horizon names, and for tests, which
  pin a vendor's host to a server on 127.0.0.1 so nothing leaves the machine. A pinned
  destination is dialled as given, private or the node's own: pinning it is the operator's
  explicit choice, and it opens that address to that ``host:port`` only.
* A name's addresses are dialled in turn, the next one started while the last is still silent
  (:mod:`hearth.network.dialler`), so one dead address does not fail the name. Upstream failures
  are told apart: a name that does not resolve or every address refusing gets 502, a resolve or
  connect that misses its deadline gets 504.
* A tunnel to a name (not an IP literal) whose first bytes open a TLS handshake must send a
  ClientHello asking for that very name (:mod:`hearth.network.client_hello`): one address of a
  CDN or a cloud front end serves many sites, chosen by that name, so an allowlisted name must
  not carry a handshake for another site (domain fronting). A ClientHello with another name,
  none, a malformed one, or one that does not arrive within the request timeout cuts the tunnel
  before a byte of it reaches the upstream (``denied_server_name``). Other protocols pass as
  they are; so do tunnels to IP literals. What the TLS session carries (an HTTP Host header)
  the proxy cannot see.
* After ``200 Connection established`` the proxy pipes bytes both ways (half-close passed on)
  until both sides have closed, either side resets, or no byte moved for the idle timeout
  (:mod:`hearth.network.tunnel`).

Logs carry host, port and outcome only -- never request paths or header values (they can carry
credentials) -- and the proxy's ``owner`` (the VM or login it serves). Every request is counted
in ``hearth_egress_requests_total{outcome}`` and open tunnels in ``hearth_egress_tunnels_open``
(see :mod:`hearth.metrics`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hearth.closing import Closing
from hearth.errors import Conflict
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.network.addresses import IPAddress, is_public_address, unmapped
from hearth.network.allowlist import (
    DEFAULT_PORT,
    AllowRule,
    ip_literal,
    parse_ip_port,
    parse_pin_key,
)
from hearth.network.client_hello import server_name_check
from hearth.network.connect_head import MAX_HEAD_BYTES, BadHead, parse_connect, read_head
from hearth.network.dialler import dial_first
from hearth.network.node_addresses import NodeAddressSource, is_node_address, node_addresses
from hearth.network.refusal import DENIALS, EgressOutcome, Refusal, send_refusal
from hearth.network.resolver import (
    LOOKUPS_PER_OWNER,
    LookupLimit,
    Resolver,
    owner_lookups,
    system_resolver,
)
from hearth.network.tunnel import TunnelPipe, close_stream

# Callers import these from here; they live with the concept they belong to.
__all__ = [
    "DEFAULT_PORT",
    "MAX_HEAD_BYTES",
    "AllowRule",
    "EgressOutcome",
    "EgressProxy",
    "EgressTimeouts",
    "IPAddress",
    "Resolver",
    "is_public_address",
    "system_resolver",
]

_log = get_logger("network.egress")
_unowned = itertools.count()  # a proxy without an owner owns its lookups alone


@dataclass(frozen=True)
class EgressTimeouts:
    """The proxy's deadlines, in seconds."""

    request: float = 10.0  # for the client's whole request head (and ClientHello) to arrive
    connect: float = 10.0  # to resolve the name and connect upstream, together
    idle: float = 300.0  # a tunnel where no byte moved either way for this long is closed


@dataclass
class EgressTraffic:
    """What one proxy carried since it started: tunnels opened, requests refused, bytes."""

    tunnels: int = 0
    refused: int = 0
    bytes_up: int = 0  # from the VM to the destinations
    bytes_down: int = 0  # back to the VM


class EgressProxy(Closing):
    """A CONNECT proxy on ``host:port`` that tunnels only to allowlisted, public destinations."""

    def __init__(
        self,
        allow: Sequence[str],
        *,
        deny: Sequence[str] = (),
        owner: str | None = None,
        allow_private: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        resolver: Resolver | None = None,
        timeouts: EgressTimeouts = EgressTimeouts(),
        max_connections: int = 64,
        max_lookups: int = LOOKUPS_PER_OWNER,
        metrics: ControllerMetrics | None = None,
        pins: Mapping[str, str] | None = None,
        node: NodeAddressSource = node_addresses,
    ) -> None:
        self.rules, self.deny_rules = _parse_policy(allow, deny)
        self._log = _log.bind(owner=owner) if owner else _log
        self.private_exceptions = frozenset(
            parse_ip_port(entry, what="allow_private entry") for entry in allow_private
        )
        self.pins = {
            parse_pin_key(name): parse_ip_port(target, what="pin target")
            for name, target in (pins or {}).items()
        }
        self._node = node  # the node's own addresses, never dialled but at a pin
        self._bind = (host, port)
        if resolver is None:  # the host's, on lookup threads counted against the owner
            resolver = owner_lookups.resolver(owner or f"proxy-{next(_unowned)}")
        self._lookups = LookupLimit(resolver, limit=max_lookups)
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._metrics = metrics if metrics is not None else ControllerMetrics()
        self._bytes_up = self._metrics.egress_bytes.labels(direction="up")
        self._bytes_down = self._metrics.egress_bytes.labels(direction="down")
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._closed = False  # set by close(), for good: a connection accepted after is reset
        self._connections: set[asyncio.Task[None]] = set()
        self._targets: dict[asyncio.Task[None], tuple[str, int]] = {}  # open tunnels' targets
        self.traffic = EgressTraffic()

    async def start(self) -> None:
        """Listen; afterwards :attr:`port` is the port actually bound."""
        if self._server is not None:
            raise Conflict("the egress proxy is already started")
        if self._closed:
            raise Conflict("the egress proxy is closed")
        try:
            server = await asyncio.start_server(self._serve, *self._bind)
        except OSError as exc:
            raise Conflict(f"the egress proxy cannot listen on {self._bind}: {exc}") from exc
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        self._log.info("egress_proxy_started", port=self._port, rules=len(self.rules))

    @property
    def port(self) -> int:
        """The TCP port the proxy listens on."""
        if self._port is None:
            raise Conflict("the egress proxy is not started")
        return self._port

    async def close(self) -> None:
        """Stop listening and reset every open connection and tunnel; safe to call twice."""
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await self._lookups.close()
        if server is not None:
            await server.wait_closed()
            self._log.info("egress_proxy_closed", port=self._port)

    def allows(self, host: str, port: int) -> bool:
        """Whether the policy lets a CONNECT to the normalised ``host`` and ``port`` through:
        on the allowlist and not on the denylist."""
        if any(rule.matches(host, port) for rule in self.deny_rules):
            return False
        return any(rule.matches(host, port) for rule in self.rules)

    def set_policy(self, allow: Sequence[str], deny: Sequence[str] = ()) -> int:
        """Replace the allow- and denylist (InvalidInput, changing nothing, if an entry is bad);
        cut the open tunnels the new policy does not allow. Returns how many were cut."""
        self.rules, self.deny_rules = _parse_policy(allow, deny)
        cut = [task for task, (host, port) in self._targets.items() if not self.allows(host, port)]
        for task in cut:
            task.cancel()
        self._log.info(
            "egress_policy_set", allow=len(self.rules), deny=len(self.deny_rules), cut=len(cut)
        )
        return len(cut)

    def may_dial(self, address: IPAddress, port: int) -> bool:
        """Whether the proxy may open a connection to ``address:port``: public or excepted, and
        not the node's own (nor when the node's addresses cannot be read)."""
        try:
            if is_node_address(address, self._node()):
                return False
        except OSError as exc:
            self._log.warning("egress_node_addresses_unknown", error=str(exc))
            return False
        return is_public_address(address) or (unmapped(address), port) in self.private_exceptions

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            # Accepted by the listening socket before close(), started after it: close()
            # could not cancel it, so it ends here, before a byte is read.
            writer.transport.abort()
            return
        # The connection runs in a task of its own, the one a cut or close() cancels: on Python
        # 3.11 the stream's callback logs its own task's cancellation as an error.
        connection = asyncio.create_task(self._connection(reader, writer))
        self._connections.add(connection)
        try:
            await connection
        except asyncio.CancelledError:
            serving = asyncio.current_task()
            if serving is not None and serving.cancelling():
                raise  # this callback itself is cancelled (the loop shuts down): so is the task
            # Cut or closed by the proxy: the connection is already reset, nothing to report.

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        aborted = False
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            aborted = True
            raise
        except OSError as exc:
            self._log.debug("egress_client_gone", error=type(exc).__name__)
        finally:
            self._connections.discard(task)
            self._targets.pop(task, None)
            await close_stream(writer, abort=aborted)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) > self._max_connections:
            overloaded = Refusal(503, EgressOutcome.OVERLOADED, "too many connections")
            if len(self._connections) > 2 * self._max_connections:
                # A 503 takes a while (its linger): past as many of them as the limit, a flood is
                # reset at once, unlogged, so a guest cannot pile up the controller's descriptors.
                self._count_refusal(overloaded, log=False)
                writer.transport.abort()
            else:
                await self._refuse(reader, writer, overloaded)
            return
        try:
            try:
                async with asyncio.timeout(self._timeouts.request):
                    head, early = await read_head(reader)
                host, port = parse_connect(head)
            except TimeoutError as exc:
                raise Refusal(408, EgressOutcome.CLIENT_TIMEOUT, "request timed out") from exc
            except BadHead as exc:
                bad = (
                    EgressOutcome.METHOD_NOT_ALLOWED
                    if exc.status == 405
                    else EgressOutcome.BAD_REQUEST
                )
                raise Refusal(exc.status, bad, exc.reason) from exc
            if not self.allows(host, port):
                raise Refusal(403, EgressOutcome.DENIED_HOST, "destination not allowed", host, port)
            # Known before it is dialled: a policy set while the name resolves or the
            # connection opens cuts it like an open tunnel.
            task = asyncio.current_task()
            assert task is not None
            self._targets[task] = (host, port)
            address, upstream = await self._open_upstream(host, port)
        except Refusal as refusal:
            await self._refuse(reader, writer, refusal)
            return
        await self._tunnel(host, port, address, (reader, writer), upstream, early)

    async def _open_upstream(
        self, host: str, port: int
    ) -> tuple[IPAddress, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Resolve once, check every address, then connect to the first that answers."""
        deadline = asyncio.get_running_loop().time() + self._timeouts.connect
        pinned = self.pins.get((host, port))
        if pinned is not None:  # dialled as the operator pinned it: no resolving, no check
            return await self._dial([pinned], deadline, host, port)
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise Refusal(
                504, EgressOutcome.UPSTREAM_TIMEOUT, "name resolution timed out", host, port
            ) from exc
        except (OSError, ValueError) as exc:
            raise Refusal(
                502, EgressOutcome.UPSTREAM_FAILED, "name did not resolve", host, port
            ) from exc
        if not all(self.may_dial(a, port) for a in addresses):
            raise Refusal(403, EgressOutcome.DENIED_ADDRESS, "destination not allowed", host, port)
        return await self._dial([(a, port) for a in addresses], deadline, host, port)

    @staticmethod
    async def _dial(
        targets: Sequence[tuple[IPAddress, int]], deadline: float, host: str, port: int
    ) -> tuple[IPAddress, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Connect to the first target that answers before ``deadline``, the next one tried
        while the last is silent (:mod:`hearth.network.dialler`); 504 when the deadline passed,
        502 when every target failed."""
        try:
            return await dial_first(targets, deadline)
        except TimeoutError as exc:
            raise Refusal(
                504, EgressOutcome.UPSTREAM_TIMEOUT, "upstream connect timed out", host, port
            ) from exc
        except OSError as exc:
            raise Refusal(
                502, EgressOutcome.UPSTREAM_FAILED, "upstream connect failed", host, port
            ) from exc

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        answers = [ipaddress.ip_address(a) for a in await self._lookups.resolve(host, port)]
        if not answers:
            raise ValueError(f"no addresses for {host}")
        return answers

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusal: Refusal
    ) -> None:
        self._count_refusal(refusal)
        await send_refusal(reader, writer, refusal)

    def _count_refusal(self, refusal: Refusal, *, log: bool = True) -> None:
        """Count a refused request (metric, traffic) and log it, a denial as a warning."""
        self._metrics.egress_requests.labels(outcome=refusal.outcome.value).inc()
        self.traffic.refused += 1
        if not log:
            return
        if refusal.outcome in DENIALS:
            self._log.warning(
                "egress_denied",
                host=refusal.host,
                port=refusal.port,
                outcome=refusal.outcome.value,
            )
        else:
            self._log.info(
                "egress_refused",
                status=refusal.status,
                outcome=refusal.outcome.value,
                reason=refusal.reason,
                host=refusal.host,
                port=refusal.port,
            )

    async def _tunnel(
        self,
        host: str,
        port: int,
        address: IPAddress,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        early: bytes,
    ) -> None:
        loop = asyncio.get_running_loop()
        client[1].write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._metrics.egress_requests.labels(outcome=EgressOutcome.TUNNELED.value).inc()
        self._metrics.egress_tunnels_open.inc()
        self.traffic.tunnels += 1
        self._log.info("egress_tunnel_opened", host=host, port=port, address=str(address))
        pipe = TunnelPipe(loop.time(), count=self._count_bytes)
        # An IP literal names no site, so the ClientHello's name is not held to it.
        check = (
            server_name_check(host, timeout=self._timeouts.request)
            if ip_literal(host) is None
            else None
        )
        ending = "proxy_closed"
        aborted = False
        try:
            ending = await pipe.run(
                client, upstream, idle=self._timeouts.idle, early=early, check=check
            )
        except asyncio.CancelledError:
            aborted = True
            raise
        finally:
            self._metrics.egress_tunnels_open.dec()
            if pipe.refusal is not None:
                outcome = EgressOutcome.DENIED_SERVER_NAME
                self._count_refusal(Refusal(403, outcome, pipe.refusal, host, port))
            await close_stream(upstream[1], abort=aborted)
            self._log.info(
                "egress_tunnel_closed",
                host=host,
                port=port,
                ending=ending,
                bytes_up=pipe.bytes_up,
                bytes_down=pipe.bytes_down,
                seconds=round(loop.time() - pipe.opened, 3),
            )

    def _count_bytes(self, up: bool, size: int) -> None:
        """Count one chunk passed on (a tunnel's bytes count as they flow, so a long-lived
        tunnel shows its traffic, and a controller that dies loses none already carried)."""
        if up:
            self.traffic.bytes_up += size
            self._bytes_up.inc(size)
        else:
            self.traffic.bytes_down += size
            self._bytes_down.inc(size)


def _parse_policy(
    allow: Sequence[str], deny: Sequence[str]
) -> tuple[tuple[AllowRule, ...], tuple[AllowRule, ...]]:
    """Both lists parsed (InvalidInput naming the first bad entry)."""
    return tuple(AllowRule.parse(e) for e in allow), tuple(AllowRule.parse(e) for e in deny)
