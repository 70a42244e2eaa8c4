"""TCP reachability probes from inside the VM: open a connection, send nothing, close it."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from hearth_agent.errors import InvalidInput

MAX_HOST_CHARS = 253
MAX_TIMEOUT_MS = 10_000
DEFAULT_TIMEOUT_MS = 1_000
PROBE_FIELDS = frozenset({"host", "port", "timeout_ms"})

# RFC 1123 labels, plus underscores, which real service names (containers, SRV) use.
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")

# What connecting needs from one getaddrinfo entry: family, socket type, protocol, address.
Endpoint = tuple[socket.AddressFamily, socket.SocketKind, int, tuple[object, ...]]


class ProbeOutcome(StrEnum):
    """How a TCP probe ended; also the ``result`` label of the probe counter."""

    CONNECTED = "connected"  # the handshake completed (and the connection was closed at once)
    REFUSED = "refused"  # the target, or a firewall rejecting for it, answered with a reset
    TIMEOUT = "timeout"  # nothing answered within timeout_ms, name resolution included
    ERROR = "error"  # anything else: unknown name, network or host unreachable...


@dataclass(frozen=True)
class ProbeTarget:
    """A validated ``POST /probe/tcp`` body."""

    host: str
    port: int
    timeout_ms: int


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found; ``error`` is None exactly when it connected."""

    outcome: ProbeOutcome
    error: str | None
    elapsed_ms: float

    @property
    def connected(self) -> bool:
        """Whether the TCP handshake completed."""
        return self.outcome is ProbeOutcome.CONNECTED


def _is_host(value: str) -> bool:
    if not 0 < len(value) <= MAX_HOST_CHARS:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _HOSTNAME.fullmatch(value) is not None
    return True


def _bounded_int(body: dict[str, object], name: str, low: int, high: int) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"field '{name}' must be an integer from {low} to {high}")
    return value


def parse_probe(body: object) -> ProbeTarget:
    """Validate a decoded ``/probe/tcp`` body; InvalidInput names the offending field.

    Unknown fields are refused rather than ignored: a misspelt ``timeout`` silently falling back
    to the default would make a diagnostic lie.
    """
    if not isinstance(body, dict):
        raise InvalidInput("/probe/tcp body must be a JSON object")
    unknown = sorted(set(body) - PROBE_FIELDS)
    if unknown:
        raise InvalidInput(
            f"field '{unknown[0]}' is not accepted; expected host, port and timeout_ms"
        )
    for name in ("host", "port"):
        if name not in body:
            raise InvalidInput(f"field '{name}' is required")
    host = body["host"]
    if not isinstance(host, str) or not _is_host(host):
        raise InvalidInput(
            f"field 'host' must be an IPv4 or IPv6 address (without brackets) or a hostname "
            f"of at most {MAX_HOST_CHARS} characters"
        )
    port = _bounded_int(body, "port", 1, 65535)
    timeout_ms = DEFAULT_TIMEOUT_MS
    if "timeout_ms" in body:
        timeout_ms = _bounded_int(body, "timeout_ms", 1, MAX_TIMEOUT_MS)
    return ProbeTarget(host=host, port=port, timeout_ms=timeout_ms)


def _endpoints(host: str, port: int, flags: int) -> list[Endpoint]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    return [(family, kind, proto, address) for family, kind, proto, _, address in infos]


def _resolve(host: str, port: int, timeout_s: float) -> list[Endpoint] | None:
    """getaddrinfo bounded by ``timeout_s`` (None when it ran out); literals skip the resolver.

    getaddrinfo has no timeout of its own, so hostnames are resolved on a daemon thread that is
    abandoned at the deadline (the resolver's own timeouts end it later).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return _endpoints(host, port, socket.AI_NUMERICHOST)
    found: list[Endpoint] = []
    failed: list[OSError] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            found.extend(_endpoints(host, port, 0))
        except OSError as exc:
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=resolve, name="probe-resolve", daemon=True).start()
    if not done.wait(timeout_s):
        return None
    if failed:
        raise failed[0]
    return found


def _connect(endpoint: Endpoint, timeout_s: float) -> None:
    family, kind, proto, address = endpoint
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout_s)
        sock.connect(address)


def _describe(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def probe_tcp(target: ProbeTarget) -> ProbeResult:
    """Try each address ``target.host`` resolves to until one accepts, within one deadline.

    Like ``socket.create_connection``, the last address's failure is the one reported.
    """
    started = time.monotonic()
    deadline = started + target.timeout_ms / 1000.0

    def result(outcome: ProbeOutcome, error: str | None) -> ProbeResult:
        elapsed_ms = round((time.monotonic() - started) * 1000.0, 3)
        return ProbeResult(outcome=outcome, error=error, elapsed_ms=elapsed_ms)

    timed_out = f"no answer within {target.timeout_ms} ms"
    try:
        endpoints = _resolve(target.host, target.port, target.timeout_ms / 1000.0)
    except OSError as exc:
        return result(ProbeOutcome.ERROR, f"name resolution failed: {_describe(exc)}")
    if endpoints is None:
        return result(ProbeOutcome.TIMEOUT, f"name resolution took over {target.timeout_ms} ms")
    outcome, error = ProbeOutcome.ERROR, "the name resolved to no address"
    for endpoint in endpoints:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result(ProbeOutcome.TIMEOUT, timed_out)
        try:
            _connect(endpoint, remaining)
        except TimeoutError:
            outcome, error = ProbeOutcome.TIMEOUT, timed_out
        except ConnectionRefusedError:
            outcome, error = ProbeOutcome.REFUSED, "connection refused"
        except OSError as exc:
            outcome, error = ProbeOutcome.ERROR, _describe(exc)
        else:
            return result(ProbeOutcome.CONNECTED, None)
    return result(outcome, error)
