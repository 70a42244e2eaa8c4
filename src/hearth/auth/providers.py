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
# Where a Browser VM finds its egress proxy (a guestfwd to the controller's EgressProxy);
# hearth-browser starts Chromium with it as its proxy, and the vendor CLIs get it as HTTPS_PROXY.
EGRESS_GUEST_IP = "10.0.2.101"
EGRESS_GUEST_PORT = 3128
EGRESS_PROXY_URL = f"http://{EGRESS_GUEST_IP}:{EGRESS_GUEST_PORT}"
# What each vendor's login needs to reach: its sign-in pages and their assets, the token endpoint
# the CLI calls, and the bot checks and identity providers those pages use.
VENDOR_EGRESS: dict[str, tuple[str, ...]] = {
    "codex": (
        "auth.openai.com",
        "*.openai.com",
        "chatgpt.com",
        "*.chatgpt.com",
        "*.oaistatic.com",
        "*.oaiusercontent.com",
        "challenges.cloudflare.com",
    ),
    "claude_code": (
        "claude.ai",
        "*.claude.ai",
        "claude.com",
        "*.claude.com",
        "*.anthropic.com",
        "challenges.cloudflare.com",
        "accounts.google.com",
        "*.gstatic.com",
        "*.googleusercontent.com",
    ),
    "gemini_cli": (
        "accounts.google.com",
        "*.google.com",
        "*.googleapis.com",
        "*.gstatic.com",
        "*.googleusercontent.com",
    ),
}


@dataclass(frozen=True)
class LoginPlan:
    """What the controller asks the Browser VM's agent to do, and what the VM may reach."""

    provider: str
    start_body: dict[str, Any]
    guest_forwards: tuple[GuestForward, ...] = field(default=())
    # Destinations the Browser VM may reach through the egress proxy (empty: no proxy at all).
    egress_allow: tuple[str, ...] = ()


def _egress(settings: Settings, defaults: tuple[str, ...]) -> tuple[str, ...]:
    """The allowlist of a login: none when egress is off, else the operator's or the defaults."""
    if settings.login_egress == "off":
        return ()
    return settings.login_egress_allow if settings.login_egress_allow is not None else defaults


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
            egress_allow=_egress(settings, VENDOR_EGRESS[provider]),
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
    # An issuer forwarded into the VM needs no proxy; one out on the network is reached through
    # the egress proxy, which only tunnels (CONNECT): such an issuer must be https.
    issuer_port = issuer.port or (443 if issuer.scheme == "https" else 80)
    issuer_egress = () if forwards else (f"{issuer.hostname}:{issuer_port}",)
    if issuer_egress and settings.login_egress != "off" and issuer.scheme != "https":
        raise ConfigError(
            "HEARTH_OIDC_ISSUER must be https when the Browser VM reaches it through the egress "
            "proxy (or forward a host-local issuer with HEARTH_OIDC_UPSTREAM_PORT)"
        )
    return LoginPlan(
        provider=provider,
        egress_allow=_egress(settings, issuer_egress),
        start_body={
            "provider": "oidc",
            "issuer": settings.oidc_issuer,
            "client_id": settings.oidc_client_id,
            "callback_port": settings.oidc_callback_port,
        },
        guest_forwards=forwards,
    )
