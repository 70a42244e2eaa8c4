"""Where a webhook may point: http(s) URLs whose host is a public address, unless allowed.

A receiver on a private, loopback or link-local address is refused unless
``HEARTH_WEBHOOK_ALLOW_PRIVATE=1`` (a receiver on the operator's own network): otherwise anyone
with an admin key could make the controller call its neighbours. The name is checked when the
webhook is made and again at every delivery, and the request goes to the address that was
checked (the URL's name is kept for ``Host`` and TLS), so a name that later resolves elsewhere
cannot redirect a delivery. Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from hearth.errors import InvalidInput
from hearth.network.addresses import is_public_address, unmapped
from hearth.network.egress import Resolver, system_resolver
from hearth.network.node_addresses import is_node_address, node_addresses

URL_MAX = 2000


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: scheme, host (as written), port, path with query."""

    url: str
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        """``url`` checked for shape (InvalidInput saying what is wrong)."""
        if len(url) > URL_MAX:
            raise InvalidInput(f"a webhook URL is at most {URL_MAX} characters")
        if any(c <= " " or c == "\x7f" for c in url):
            raise InvalidInput("a webhook URL must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # brackets that hold no IPv6 address, or are not closed
            raise InvalidInput(f"the webhook URL's host is not valid: {exc}") from exc
        if parts.scheme not in ("http", "https"):
            raise InvalidInput(f"a webhook URL must be http or https, not {parts.scheme!r}")
        if parts.username is not None or parts.password is not None:
            raise InvalidInput("a webhook URL must not carry a user or password")
        if not parts.hostname:
            raise InvalidInput("a webhook URL needs a host")
        host = _ascii_host(parts.hostname)
        port = _port(parts, default=443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(url=url, scheme=parts.scheme, host=host, port=port, path=path)

    @property
    def netloc(self) -> str:
        """The URL's host (bracketed if IPv6) and its port unless the scheme's own: ``Host``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        return host if self.port == default_port else f"{host}:{self.port}"

    async def address(self, *, allow_private: bool, resolver: Resolver = system_resolver) -> str:
        """The address to send to: the host's first address that may be dialled; InvalidInput
        if it does not resolve or every address is private (and that is not allowed)."""
        try:
            candidates = [ipaddress.ip_address(self.host)]
        except ValueError:
            try:
                found = await resolver(self.host, self.port)
            except OSError as exc:
                raise InvalidInput(f"the webhook host {self.host} does not resolve") from exc
            candidates = [ipaddress.ip_address(entry) for entry in found]
        for candidate in candidates:
            if allow_private:
                return str(unmapped(candidate))
            # The node's own public address would reach its own services (the API, the store).
            if is_public_address(candidate) and not _is_this_node(candidate):
                return str(unmapped(candidate))
        raise InvalidInput(
            f"the webhook host {self.host} is a private, loopback or link-local address, or "
            "this host's own; set HEARTH_WEBHOOK_ALLOW_PRIVATE=1 to allow receivers on your own "
            "network"
        )


def _is_this_node(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``address`` is one of this host's (when they cannot be read: taken as one)."""
    try:
        return is_node_address(address, node_addresses())
    except OSError:
        return True


def _port(parts: SplitResult, *, default: int) -> int:
    """The URL's port, ``default`` when it names none; InvalidInput for one that is not a
    number from 1 to 65535 (port 0 is no port to send to, not the scheme's own)."""
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"the webhook URL's port must be 1 to 65535: {exc}") from exc
    if port == 0:
        raise InvalidInput("the webhook URL's port must be 1 to 65535, not 0")
    return default if port is None else port


def _ascii_host(hostname: str) -> str:
    """The host as it goes on the wire: an IP address as it is, a name in its ASCII (IDNA)
    form; InvalidInput for an IPv6 zone or a name IDNA refuses (an empty or too long label)."""
    if "%" in hostname:
        raise InvalidInput("a webhook URL's IPv6 address must not name a zone (%)")
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        try:
            return hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidInput(f"the webhook URL's host is not a valid name: {exc}") from exc
    return hostname
