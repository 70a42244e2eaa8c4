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
from urllib.parse import urlsplit

from hearth.errors import InvalidInput
from hearth.network.addresses import is_public_address, unmapped
from hearth.network.egress import Resolver, system_resolver

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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidInput(f"a webhook URL must be http or https, not {parts.scheme!r}")
        if parts.username is not None or parts.password is not None:
            raise InvalidInput("a webhook URL must not carry a user or password")
        if not parts.hostname:
            raise InvalidInput("a webhook URL needs a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidInput(f"the webhook URL's port is not valid: {exc}") from exc
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(url=url, scheme=parts.scheme, host=parts.hostname, port=port, path=path)

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
            if allow_private or is_public_address(candidate):
                return str(unmapped(candidate))
        raise InvalidInput(
            f"the webhook host {self.host} is a private, loopback or link-local address; "
            "set HEARTH_WEBHOOK_ALLOW_PRIVATE=1 to allow receivers on your own network"
        )
