"""How each provider's login runs in a Browser VM: the agent's start request and allowed egress."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hearth.config import Settings
from hearth.errors import ConfigError, InvalidInput
from hearth.network.allowlist import url_target
from hearth.vm.types import GuestForward
from hearth_agent.wire import Provider

# QEMU user-net's own subnet: a guest-visible address there can be forwarded to the host.
_USER_NET = ipaddress.ip_network("10.0.2.0/24")
# What each vendor's login needs to reach, and nothing more: the CLI's authorize URL and the
# sign-in pages it leads to, the static hosts those pages cannot work without, and the CLI's own
# calls (token exchange, post-login profile/setup). Chromium and the CLI share the one proxy, so
# one list serves both. Hosts are exact, never wildcards: a wildcard admitted hosts where anyone
# can publish content (*.googleusercontent.com, script.google.com, sites.google.com,
# *.storage.googleapis.com, *.oaiusercontent.com), through which a page in the Browser VM could
# carry the OAuth code or tokens out. Read from the CLIs pinned in hearth/images/vendor/
# (codex 0.171.0, claude-code 2.1.332, gemini-cli 0.61.0); an operator who needs more (a social
# sign-in the list leaves out) sets HEARTH_LOGIN_EGRESS_ALLOW.
VENDOR_EGRESS: dict[Provider, tuple[str, ...]] = {
    Provider.CODEX: (
        # `codex login`'s authorize URL (/oauth/authorize) and OpenAI's sign-in and consent
        # pages; the CLI's /oauth/token (code exchange, then the API-key token exchange) and
        # /api/accounts (workspace list). Left out: *.openai.com (api.openai.com keeps files
        # under anyone's API key), chatgpt.com (the login never goes there), *.oaiusercontent.com
        # (user uploads and generated files).
        "auth.openai.com",
        # The sign-in pages' scripts, styles and images (auth-cdn.oaistatic.com/assets/...).
        "auth-cdn.oaistatic.com",
        # OpenAI's bot check: the sign-in pages load its SDK from here and post a proof-of-work
        # token to /backend-api/sentinel/req, which the password and email-code steps require.
        "sentinel.openai.com",
        # Cloudflare Turnstile, the challenge the sign-in pages (and the bot check) may show.
        "challenges.cloudflare.com",
    ),
    Provider.CLAUDE_CODE: (
        # CLAUDE_AI_AUTHORIZE_URL: `claude auth login --claudeai` opens
        # claude.com/cai/oauth/authorize, which redirects to claude.ai.
        "claude.com",
        # The sign-in (email code, Google) and consent pages: /login, /oauth/authorize.
        "claude.ai",
        # claude.ai's application code, styles and fonts: the sign-in page is blank without it.
        "assets-proxy.anthropic.com",
        # TOKEN_URL (/v1/oauth/token, the CLI's code exchange), and CLAUDEAI_SUCCESS_URL, where
        # the CLI's callback sends the browser once the tokens are saved.
        "platform.claude.com",
        # The CLI's post-login calls: /api/oauth/profile (the plan and rate-limit tier stored
        # with the tokens) and ROLES_URL /api/oauth/claude_cli/roles. The API also takes uploads
        # under anyone's API key; it stays because the CLI needs it (one list for both).
        "api.anthropic.com",
        # Cloudflare's challenge in front of claude.ai.
        "challenges.cloudflare.com",
        # "Continue with Google" on claude.ai: Google's sign-in and consent pages.
        "accounts.google.com",
        # Those pages' scripts and styles (www), images (ssl) and fonts; profile pictures on
        # lh3.googleusercontent.com are left out (*.googleusercontent.com serves anyone's
        # content), the pages work without them.
        "www.gstatic.com",
        "ssl.gstatic.com",
        "fonts.gstatic.com",
    ),
    Provider.GEMINI_CLI: (
        # gemini's authorize URL (accounts.google.com/o/oauth2/v2/auth), Google's sign-in and
        # consent pages. Left out: *.google.com (script.google.com, sites.google.com and
        # docs.google.com forms take anyone's content), developers.google.com (the success page
        # the CLI's callback redirects to after the tokens are saved).
        "accounts.google.com",
        # Those pages' scripts and styles (www), images (ssl) and fonts.
        "www.gstatic.com",
        "ssl.gstatic.com",
        "fonts.gstatic.com",
        # The CLI's code exchange (google-auth-library's token endpoint, /token).
        "oauth2.googleapis.com",
        # The CLI's post-login setup: loadCodeAssist and onboardUser (the user's Code Assist
        # tier). Left out: the rest of *.googleapis.com -- storage.googleapis.com and
        # www.googleapis.com both serve Cloud Storage, where anyone's bucket can take uploads;
        # www.googleapis.com/oauth2/v2/userinfo, which the CLI calls only to cache the account's
        # email for display, fails and the CLI logs it and goes on.
        "cloudcode-pa.googleapis.com",
    ),
}


@dataclass(frozen=True)
class LoginPlan:
    """What the controller asks the Browser VM's agent to do, and what the VM may reach."""

    provider: Provider
    start_body: dict[str, Any]
    guest_forwards: tuple[GuestForward, ...] = field(default=())
    # Destinations the Browser VM may reach through the egress proxy (empty: no proxy at all).
    egress_allow: tuple[str, ...] = ()


# The most a login may last in the Browser VM's agent, per runner (it refuses more).
OIDC_LOGIN_MAX_S = 3600.0
VENDOR_LOGIN_MAX_S = 86400.0
# The agent's clock starts a moment after the controller's: given this much more, it ends a
# login only when the controller's deadline could not (an oidc login past the agent's most).
AGENT_LOGIN_GRACE_S = 5.0


def agent_login_limit(settings: Settings, most: float) -> float:
    """The time limit a Browser VM's agent is given for a login."""
    return min(settings.login_timeout_s + AGENT_LOGIN_GRACE_S, most)


def _egress(settings: Settings, defaults: tuple[str, ...]) -> tuple[str, ...]:
    """The allowlist of a login: none when egress is off, else the operator's or the defaults."""
    if settings.login_egress == "off":
        return ()
    return settings.login_egress_allow if settings.login_egress_allow is not None else defaults


def parse_provider(value: str) -> Provider:
    """``value`` as a Provider; InvalidInput naming the supported ones otherwise."""
    try:
        return Provider(value)
    except ValueError:
        supported = ", ".join(Provider)
        raise InvalidInput(f"provider: must be one of {supported}, got {value[:64]!r}") from None


def provider_to_start(name: str, settings: Settings) -> Provider:
    """The provider a new login for ``name`` uses; InvalidInput if unknown or if this
    controller is not configured for it (a client's request it cannot serve, not a fault)."""
    try:
        return login_plan(name, settings).provider
    except ConfigError as exc:
        raise InvalidInput(f"provider: {exc.message}; no login was started") from exc


def login_plan(name: str, settings: Settings) -> LoginPlan:
    """The plan for provider ``name``: InvalidInput if unknown, ConfigError if unconfigured."""
    provider = parse_provider(name)
    if provider is not Provider.OIDC:
        # The vendor CLI's own login command runs in the Browser VM under the agent's vendor
        # runner (hearth_agent.vendor): its PTY, its prompts and its callback server.
        return LoginPlan(
            provider=provider,
            start_body={
                "provider": provider.value,
                "timeout_s": agent_login_limit(settings, VENDOR_LOGIN_MAX_S),
            },
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
    issuer_egress = () if forwards else (url_target(settings.oidc_issuer),)
    if issuer_egress and settings.login_egress != "off" and issuer.scheme != "https":
        raise ConfigError(
            "HEARTH_OIDC_ISSUER must be https when the Browser VM reaches it through the egress "
            "proxy (or forward a host-local issuer with HEARTH_OIDC_UPSTREAM_PORT)"
        )
    return LoginPlan(
        provider=provider,
        egress_allow=_egress(settings, issuer_egress),
        start_body={
            "provider": Provider.OIDC.value,
            "issuer": settings.oidc_issuer,
            "client_id": settings.oidc_client_id,
            "callback_port": settings.oidc_callback_port,
            # Without it the agent gave the user its own 10 min, whatever the setting.
            "timeout_s": agent_login_limit(settings, OIDC_LOGIN_MAX_S),
        },
        guest_forwards=forwards,
    )
