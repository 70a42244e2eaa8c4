"""An HTTP CONNECT proxy that lets a Browser VM reach its login provider's hosts and nothing else.

A Browser VM runs on QEMU user networking with ``restrict=on``, so it has no route out. The
controller starts one :class:`EgressProxy` per Browser VM on 127.0.0.1 (random port), and QEMU's
``guestfwd`` relays a guest address (e.g. ``10.0.2.101:3128``) to it; Chromium and the vendor CLI
in the VM use that address as their HTTPS proxy. What the proxy does with each connection:

* Only ``CONNECT host:port HTTP/1.1`` is served. Plain-HTTP proxying (``GET http://...``) gets
  405; a malformed request line or header block, or a head over 8 KiB, gets 400.
* ``host:port`` must match the allowlist: entries are ``host[:port]`` (port defaults to 443),
  either an exact host (``auth.openai.com``, an IP literal, ``[2001:db8::1]:8443``) or a suffix
  wildcard ``*.example.com``, which matches any name *below* example.com but not example.com
  itself. Anything else gets 403 and an ``egress_denied`` log line.
* The name is resolved once (through the injected ``resolver``) and the proxy dials the resolved
  address, never the name again, so a second DNS answer cannot steer the tunnel elsewhere. If any
  resolved address is not public unicast -- loopback, RFC 1918 private, CGNAT (100.64/10),
  link-local, multicast, unspecified, reserved, IPv6 ULA, or an IPv4 one of those embedded in an
  IPv6 address -- the request gets 403: an allowlisted name must not become a way into the host's
  own services (DNS rebinding).
* ``allow_private`` is the one way around that check: exact ``ip:port`` strings
  (``127.0.0.1:8443``, ``[::1]:8443``) the proxy may dial although they are not public. It is
  for tests and for an operator's own OAuth server on a private network. It does not widen the
  allowlist: the name or IP literal the VM asks for must still be on it.
* ``pins`` map an allowlisted ``host:port`` to the exact ``ip:port`` to dial instead of resolving
  it (like curl's ``--resolve``): for an operator's split-horizon names, and for tests, which
  pin a vendor's host to a server on 127.0.0.1 so nothing leaves the machine. A pinned
  destination is dialled as given, private or not: pinning it is the operator's explicit choice.
* Upstream failures are told apart: a name that does not resolve or a refused connection gets
  502, a resolve or connect that misses its deadline gets 504.
* After ``200 Connection established`` the proxy pipes bytes both ways (half-close passed on)
  until both sides have closed, either side resets, or no byte moved for the idle timeout.

Logs carry host, port and outcome only -- never request paths or header values (they can carry
credentials). Every request is counted in ``hearth_egress_requests_total{outcome}`` and open
tunnels in ``hearth_egress_tunnels_open`` (see :mod:`hearth.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from types import TracebackType
from typing import Self

from hearth.errors import Conflict, InvalidInput
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Answers the addresses (IP literals, in preference order) of a host name; may raise OSError.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

DEFAULT_PORT = 443
MAX_HEAD_BYTES = 8 * 1024
_CHUNK = 64 * 1024
_CLOSE_GRACE = 1.0  # seconds a closing socket may take to flush before it is reset
_LINGER_BYTES = 64 * 1024  # unread request bytes swallowed after a refusal, so no RST eats it
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Methods of a well-formed request we refuse with 405 rather than 400.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"})
_VERSION = re.compile(r"HTTP/1\.[01]")
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*")

_log = get_logger("network.egress")


class EgressOutcome(StrEnum):
    """How one proxy request ended: the ``outcome`` label of ``hearth_egress_requests_total``."""

    TUNNELED = "tunneled"  # 200 sent; bytes piped until the tunnel closed
    DENIED_HOST = "denied_host"  # 403: host:port is not on the allowlist
    DENIED_ADDRESS = "denied_address"  # 403: the target resolved to a non-public address
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405: plain-HTTP proxying (GET http://...)
    BAD_REQUEST = "bad_request"  # 400: malformed request line or headers, or head too large
    CLIENT_TIMEOUT = "client_timeout"  # 408: the request head did not arrive in time
    UPSTREAM_FAILED = "upstream_failed"  # 502: the name did not resolve or the connect failed
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504: resolve + connect missed the deadline
    OVERLOADED = "overloaded"  # 503: the proxy already holds max_connections


@dataclass(frozen=True)
class EgressTimeouts:
    """The proxy's deadlines, in seconds."""

    request: float = 10.0  # for the client's whole request head to arrive
    connect: float = 10.0  # to resolve the name and connect upstream, together
    idle: float = 300.0  # a tunnel where no byte moved either way for this long is closed


@dataclass(frozen=True)
class AllowRule:
    """One allowlist entry: an exact host (or IP literal) or a ``*.suffix`` wildcard, and a port."""

    host: str  # normalised (lower case, no trailing dot); for a wildcard, the suffix without "*."
    port: int
    wildcard: bool = False

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """Parse ``host[:port]`` or ``*.suffix[:port]``; the port defaults to 443."""
        try:
            host, port = _split_host_port(entry.strip(), default_port=DEFAULT_PORT)
            wildcard = host.startswith("*.")
            host = _normalise_host(host[2:] if wildcard else host)
            if wildcard and _ip_literal(host) is not None:
                raise ValueError("a wildcard needs a domain suffix, not an IP address")
        except ValueError as exc:
            raise InvalidInput(f"egress allowlist entry {entry!r} is invalid: {exc}") from exc
        return cls(host=host, port=port, wildcard=wildcard)

    def matches(self, host: str, port: int) -> bool:
        """Whether the normalised ``host`` and ``port`` of a CONNECT target fall under this rule."""
        if port != self.port:
            return False
        if self.wildcard:
            return _ip_literal(host) is None and host.endswith("." + self.host)
        return host == self.host


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is public unicast: the only kind the proxy dials without being told."""
    addresses: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            addresses.append(embedded)
    return all(
        a.is_global
        and not (
            a.is_private
            or a.is_loopback
            or a.is_link_local
            or a.is_multicast
            or a.is_unspecified
            or a.is_reserved
            or (isinstance(a, ipaddress.IPv4Address) and a in _CGNAT)
        )
        for a in addresses
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (``getaddrinfo``): the TCP addresses of ``host``, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressProxy:
    """A CONNECT proxy on ``host:port`` that tunnels only to allowlisted, public destinations."""

    def __init__(
        self,
        allow: Sequence[str],
        *,
        allow_private: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        resolver: Resolver = system_resolver,
        timeouts: EgressTimeouts = EgressTimeouts(),
        max_connections: int = 64,
        metrics: ControllerMetrics | None = None,
        pins: Mapping[str, str] | None = None,
    ) -> None:
        self.rules = tuple(AllowRule.parse(entry) for entry in allow)
        self.private_exceptions = frozenset(_parse_private(entry) for entry in allow_private)
        self.pins = {
            _pin_key(name): _parse_private(target) for name, target in (pins or {}).items()
        }
        self._bind = (host, port)
        self._resolver = resolver
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._metrics = metrics if metrics is not None else ControllerMetrics()
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; afterwards :attr:`port` is the port actually bound."""
        if self._server is not None:
            raise Conflict("the egress proxy is already started")
        try:
            server = await asyncio.start_server(self._serve, *self._bind)
        except OSError as exc:
            raise Conflict(f"the egress proxy cannot listen on {self._bind}: {exc}") from exc
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        _log.info("egress_proxy_started", port=self._port, rules=len(self.rules))

    @property
    def port(self) -> int:
        """The TCP port the proxy listens on."""
        if self._port is None:
            raise Conflict("the egress proxy is not started")
        return self._port

    async def close(self) -> None:
        """Stop listening and reset every open connection and tunnel; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
            _log.info("egress_proxy_closed", port=self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def allows(self, host: str, port: int) -> bool:
        """Whether the allowlist lets a CONNECT to the normalised ``host`` and ``port`` through."""
        return any(rule.matches(host, port) for rule in self.rules)

    def may_dial(self, address: IPAddress, port: int) -> bool:
        """Whether the proxy may open a connection to ``address:port`` (public, or excepted)."""
        return is_public_address(address) or (_unmapped(address), port) in self.private_exceptions

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        aborted = False
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            aborted = True
            raise
        except OSError as exc:
            _log.debug("egress_client_gone", error=type(exc).__name__)
        finally:
            self._connections.discard(task)
            await _shut(writer, abort=aborted)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) > self._max_connections:
            overloaded = _Refusal(503, EgressOutcome.OVERLOADED, "too many connections")
            await self._refuse(reader, writer, overloaded)
            return
        try:
            try:
                async with asyncio.timeout(self._timeouts.request):
                    head, early = await _read_head(reader)
            except TimeoutError as exc:
                raise _Refusal(408, EgressOutcome.CLIENT_TIMEOUT, "request timed out") from exc
            host, port = _parse_connect(head)
            if not self.allows(host, port):
                raise _Refusal(
                    403, EgressOutcome.DENIED_HOST, "destination not allowed", host, port
                )
            address, upstream = await self._open_upstream(host, port)
        except _Refusal as refusal:
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
            raise _Refusal(
                504, EgressOutcome.UPSTREAM_TIMEOUT, "name resolution timed out", host, port
            ) from exc
        except (OSError, ValueError) as exc:
            raise _Refusal(
                502, EgressOutcome.UPSTREAM_FAILED, "name did not resolve", host, port
            ) from exc
        if not all(self.may_dial(a, port) for a in addresses):
            raise _Refusal(403, EgressOutcome.DENIED_ADDRESS, "destination not allowed", host, port)
        return await self._dial([(a, port) for a in addresses], deadline, host, port)

    @staticmethod
    async def _dial(
        targets: Sequence[tuple[IPAddress, int]], deadline: float, host: str, port: int
    ) -> tuple[IPAddress, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Connect to the first target that answers before ``deadline`` (502/504 otherwise)."""
        failure: OSError | None = None
        for address, dial_port in targets:
            try:
                async with asyncio.timeout_at(deadline):
                    return address, await asyncio.open_connection(str(address), dial_port)
            except TimeoutError as exc:
                raise _Refusal(
                    504, EgressOutcome.UPSTREAM_TIMEOUT, "upstream connect timed out", host, port
                ) from exc
            except OSError as exc:
                failure = exc
        raise _Refusal(
            502, EgressOutcome.UPSTREAM_FAILED, "upstream connect failed", host, port
        ) from failure

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        answers = [ipaddress.ip_address(a) for a in await self._resolver(host, port)]
        if not answers:
            raise ValueError(f"no addresses for {host}")
        return answers

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusal: _Refusal
    ) -> None:
        self._metrics.egress_requests.labels(outcome=refusal.outcome.value).inc()
        if refusal.outcome in (EgressOutcome.DENIED_HOST, EgressOutcome.DENIED_ADDRESS):
            _log.warning(
                "egress_denied",
                host=refusal.host,
                port=refusal.port,
                outcome=refusal.outcome.value,
            )
        else:
            _log.info(
                "egress_refused",
                status=refusal.status,
                outcome=refusal.outcome.value,
                reason=refusal.reason,
                host=refusal.host,
                port=refusal.port,
            )
        body = f"{refusal.status} {HTTPStatus(refusal.status).phrase}: {refusal.reason}\n".encode()
        allow = "Allow: CONNECT\r\n" if refusal.status == 405 else ""
        writer.write(
            f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            f"{allow}Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                # Swallow what the client still sends: closing with unread input would reset the
                # connection and could destroy the response before the client reads it.
                swallowed = 0
                while swallowed < _LINGER_BYTES and (chunk := await reader.read(_CHUNK)):
                    swallowed += len(chunk)

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
        if early:
            upstream[1].write(early)
        self._metrics.egress_requests.labels(outcome=EgressOutcome.TUNNELED.value).inc()
        self._metrics.egress_tunnels_open.inc()
        _log.info("egress_tunnel_opened", host=host, port=port, address=str(address))
        pipe = _Pipe(loop.time(), bytes_up=len(early))
        ending = "proxy_closed"
        aborted = False
        try:
            ending = await pipe.run(client, upstream, idle=self._timeouts.idle)
        except asyncio.CancelledError:
            aborted = True
            raise
        finally:
            self._metrics.egress_tunnels_open.dec()
            await _shut(upstream[1], abort=aborted)
            _log.info(
                "egress_tunnel_closed",
                host=host,
                port=port,
                ending=ending,
                bytes_up=pipe.bytes_up,
                bytes_down=pipe.bytes_down,
                seconds=round(loop.time() - pipe.opened, 3),
            )


class _Refusal(Exception):
    """A request the proxy answers with an error status; never leaves this module."""

    def __init__(
        self,
        status: int,
        outcome: EgressOutcome,
        reason: str,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.outcome = outcome
        self.reason = reason  # fixed text: never echoes what the client sent
        self.host = host
        self.port = port


class _Pipe:
    """Both directions of one tunnel: copies bytes, counts them, and notes when data last moved."""

    def __init__(self, opened: float, *, bytes_up: int = 0) -> None:
        self.opened = opened
        self.last_activity = opened
        self.bytes_up = bytes_up
        self.bytes_down = 0

    async def run(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        *,
        idle: float,
    ) -> str:
        """Copy until both sides closed (``closed``), one reset (``reset``) or idle (``idle``)."""
        loop = asyncio.get_running_loop()
        pending = {
            asyncio.create_task(self._copy(client[0], upstream[1], up=True)),
            asyncio.create_task(self._copy(upstream[0], client[1], up=False)),
        }
        try:
            while pending:
                remaining = self.last_activity + idle - loop.time()
                if remaining <= 0:
                    return "idle"
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    error = task.exception()
                    if isinstance(error, OSError):
                        return "reset"
                    if error is not None:
                        raise error
            return "closed"
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(_CHUNK):
            self.last_activity = loop.time()
            if up:
                self.bytes_up += len(chunk)
            else:
                self.bytes_down += len(chunk)
            writer.write(chunk)
            await writer.drain()
            self.last_activity = loop.time()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on; the other direction keeps flowing


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head (without its blank line) and whatever the client sent after it."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) >= MAX_HEAD_BYTES:
            raise _Refusal(400, EgressOutcome.BAD_REQUEST, "request head too large")
        chunk = await reader.read(MAX_HEAD_BYTES)
        if not chunk:
            raise _Refusal(400, EgressOutcome.BAD_REQUEST, "incomplete request head")
        buffer += chunk
    if end + 4 > MAX_HEAD_BYTES:
        raise _Refusal(400, EgressOutcome.BAD_REQUEST, "request head too large")
    return bytes(buffer[:end]), bytes(buffer[end + 4 :])


def _parse_connect(head: bytes) -> tuple[str, int]:
    """The normalised ``host, port`` of a well-formed CONNECT request head."""
    request_line, *headers = head.split(b"\r\n")
    if not all(_HEADER_LINE.fullmatch(line) for line in headers):
        raise _Refusal(400, EgressOutcome.BAD_REQUEST, "malformed header")
    try:
        method, target, version = request_line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refusal(400, EgressOutcome.BAD_REQUEST, "malformed request line") from exc
    if not _VERSION.fullmatch(version):
        raise _Refusal(400, EgressOutcome.BAD_REQUEST, "unsupported protocol version")
    if method != "CONNECT":
        if method in _HTTP_METHODS:
            raise _Refusal(405, EgressOutcome.METHOD_NOT_ALLOWED, "only CONNECT is served")
        raise _Refusal(400, EgressOutcome.BAD_REQUEST, "malformed request line")
    try:
        host, port = _split_host_port(target, default_port=None)
        return _normalise_host(host), port
    except ValueError as exc:
        raise _Refusal(400, EgressOutcome.BAD_REQUEST, "malformed CONNECT target") from exc


def _split_host_port(text: str, *, default_port: int | None) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; without a port, ``default_port`` (None: required)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or "%" in host:
            raise ValueError("a bracketed host must be an IPv6 address")
        ipaddress.IPv6Address(host)  # ValueError if it is not one
        if rest and not rest.startswith(":"):
            raise ValueError("junk after the bracketed address")
        port_text = rest[1:] if rest else None
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets")
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise ValueError("a port is required")
        return host, default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a TCP port")
    return host, int(port_text)


def _normalise_host(host: str) -> str:
    """Lower-case, without a trailing dot, IP literals in canonical form; ValueError if invalid."""
    literal = _ip_literal(host)
    if literal is not None:
        return str(literal)
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise ValueError("not a host name or IP address")
    return name


def _ip_literal(host: str) -> IPAddress | None:
    if "%" in host:
        return None  # scoped IPv6 (fe80::1%eth0) is never a valid destination or rule
    try:
        return _unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) as the IPv4 address it stands for."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _pin_key(entry: str) -> tuple[str, int]:
    """``host[:port]`` of a pin, normalised like a CONNECT target; InvalidInput if malformed."""
    try:
        host, port = _split_host_port(entry.strip(), default_port=DEFAULT_PORT)
        return _normalise_host(host), port
    except ValueError as exc:
        raise InvalidInput(f"egress pin {entry!r}: expected host[:port]") from exc


def _parse_private(entry: str) -> tuple[IPAddress, int]:
    try:
        host, port = _split_host_port(entry.strip(), default_port=None)
        address = _ip_literal(host)
        if address is None:
            raise ValueError("the host must be an IP address")
    except ValueError as exc:
        raise InvalidInput(f"egress allow_private entry {entry!r} must be ip:port: {exc}") from exc
    return address, port


async def _shut(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    """Close one socket: flush and close politely, or reset at once (shutdown, or after a grace)."""
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    try:
        async with asyncio.timeout(_CLOSE_GRACE):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
