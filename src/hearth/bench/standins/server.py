"""``StandInServer``: a provider's stand-in served over TLS on loopback, with a leaf of the test CA.

A :class:`~hearth.bench.loopback_server.LoopbackServer` without a lifespan: closing does not wait
for open streams, so a CLI still holding a keep-alive connection or a slow stream is cut. The
egress pins send a provider's real API host names to its stand-in's address.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp

from hearth.bench.loopback_server import LoopbackServer
from hearth.bench.standins.ca import LeafFiles
from hearth.network.allowlist import AllowRule
from hearth.network.provider_hosts import PROVIDER_API_HOSTS
from hearth_agent.wire import Provider


class StandInServer(LoopbackServer):
    """Serves ``app`` over HTTPS on ``host:port`` until closed; ``async with`` starts it."""

    def __init__(
        self, app: ASGIApp, *, leaf: LeafFiles, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(app, host=host, port=port, tls=leaf)
        self.leaf = leaf


def provider_pins(provider: Provider, address: str) -> dict[str, str]:
    """Egress pins (``host:443`` → ``ip:port``) that send every API host of ``provider`` to
    ``address``."""
    return {f"{AllowRule.parse(entry).host}:443": address for entry in PROVIDER_API_HOSTS[provider]}


def egress_pins(servers: Mapping[Provider, StandInServer]) -> str:
    """``HEARTH_EGRESS_PINS``: every API host of each provider to its stand-in."""
    return ",".join(
        f"{host}={target}"
        for provider, server in servers.items()
        for host, target in provider_pins(provider, server.address).items()
    )
