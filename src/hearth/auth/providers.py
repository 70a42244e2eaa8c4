"""How each provider's login runs in a Browser VM: the agent's start request and allowed egress."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hearth.config import Settings
from hearth.errors import ConfigError, InvalidInput
from hearth.vm.types import GuestForward

PROVIDERS = ("claude_code", "codex", "gemini_cli", "oidc")
# QEMU user-net's own subnet: a guest-visible address there can be forwarded to the host.
_USER_NET = ipaddress.ip_network("10.0.2.0/24")


@dataclass(frozen=True)
class LoginPlan:
    """What the controller asks the Browser VM's agent to do, and what the VM may reach."""

    provider: str
    start_body: dict[str, Any]
    guest_forwards: tuple[GuestForward, ...] = field(default=())


def login_plan(provider: str, settings: Settings) -> LoginPlan:
    """The plan for ``provider``; InvalidInput for an unknown one, ConfigError if unconfigured."""
    if provider not in PROVIDERS:
        raise InvalidInput(f"provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    if provider != "oidc":
        # The vendor CLI's own login command runs in the Browser VM under the agent's vendor
        # runner (hearth_agent.vendor): its PTY, its prompts and its callback server.
        return LoginPlan(
            provider=provider,
            start_body={"provider": provider, "timeout_s": settings.login_timeout_s},
        )
    if not settings.oidc_issuer:
        raise ConfigError("the oidc provider is not configured: set HEARTH_OIDC_ISSUER")
    issuer = urlsplit(settings.oidc_issuer)
    forwards: tuple[GuestForward, ...] = ()
    if settings.oidc_upstream_port is not None and issuer.hostname:
        try:
            address = ipaddress.ip_address(issuer.hostname)
        except ValueError:
            address = None
        if address is None or address not in _USER_NET:
            raise ConfigError(
                "HEARTH_OIDC_UPSTREAM_PORT needs HEARTH_OIDC_ISSUER on a 10.0.2.x address "
                "(what the Browser VM sees)"
            )
        port = issuer.port or (443 if issuer.scheme == "https" else 80)
        forwards = (
            GuestForward(
                guest_ip=str(address), guest_port=port, host_port=settings.oidc_upstream_port
            ),
        )
    return LoginPlan(
        provider=provider,
        start_body={
            "provider": "oidc",
            "issuer": settings.oidc_issuer,
            "client_id": settings.oidc_client_id,
            "callback_port": settings.oidc_callback_port,
        },
        guest_forwards=forwards,
    )
