"""Egress allowlist entries and CONNECT targets: parsing ``host[:port]`` and matching the two.

An entry is ``host[:port]`` (port defaults to 443): an exact host (``auth.openai.com``, an IP
literal, ``[2001:db8::1]:8443``) or a suffix wildcard ``*.example.com``, which matches any name
*below* example.com but not example.com itself. Host names are compared lower-cased and without
a trailing dot; IP literals in canonical form, an IPv4-mapped IPv6 literal as its IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from hearth.errors import InvalidInput
from hearth.network.addresses import IPAddress, unmapped

DEFAULT_PORT = 443
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


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
            host, port = split_host_port(entry.strip(), default_port=DEFAULT_PORT)
            wildcard = host.startswith("*.")
            host = normalise_host(host[2:] if wildcard else host)
            if wildcard and ip_literal(host) is not None:
                raise ValueError("a wildcard needs a domain suffix, not an IP address")
        except ValueError as exc:
            raise InvalidInput(f"egress allowlist entry {entry!r} is invalid: {exc}") from exc
        return cls(host=host, port=port, wildcard=wildcard)

    def matches(self, host: str, port: int) -> bool:
        """Whether the normalised ``host`` and ``port`` of a CONNECT target fall under this rule."""
        if port != self.port:
            return False
        if self.wildcard:
            return ip_literal(host) is None and host.endswith("." + self.host)
        return host == self.host


def split_host_port(text: str, *, default_port: int | None) -> tuple[str, int]:
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


def normalise_host(host: str) -> str:
    """Lower-case, without a trailing dot, IP literals in canonical form; ValueError if invalid."""
    literal = ip_literal(host)
    if literal is not None:
        return str(literal)
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise ValueError("not a host name or IP address")
    return name


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address (IPv4-mapped IPv6 as IPv4), or None if it is a name."""
    if "%" in host:
        return None  # scoped IPv6 (fe80::1%eth0) is never a valid destination or rule
    try:
        return unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


def url_target(url: str) -> str:
    """The ``host:port`` entry (``[v6]:port``) an http(s) URL is dialled at; its port defaults
    by scheme."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_pin_key(entry: str) -> tuple[str, int]:
    """``host[:port]`` of a pin, normalised like a CONNECT target; InvalidInput if malformed."""
    try:
        host, port = split_host_port(entry.strip(), default_port=DEFAULT_PORT)
        return normalise_host(host), port
    except ValueError as exc:
        raise InvalidInput(f"egress pin {entry!r}: expected host[:port]") from exc


def parse_ip_port(entry: str, *, what: str) -> tuple[IPAddress, int]:
    """An exact ``ip:port`` (``[v6]:port``) of an ``allow_private`` entry or a pin's target."""
    try:
        host, port = split_host_port(entry.strip(), default_port=None)
        address = ip_literal(host)
        if address is None:
            raise ValueError("the host must be an IP address")
    except ValueError as exc:
        raise InvalidInput(f"egress {what} {entry!r} must be ip:port: {exc}") from exc
    return address, port
