"""RFC 7009 token revocation at a generic OIDC provider, for a deleted ``oidc`` credential.

The endpoint comes from the issuer's discovery document (``revocation_endpoint``); an issuer
that names none cannot be asked, which is logged, not an error. Only the configured issuer
(``HEARTH_OIDC_ISSUER``) is asked, whatever issuer a document claims, so a stored document can
never make the controller send a token elsewhere. The token is sent in the form body, never in
a URL, and never logged.

An issuer on the host's loopback that guests reach at a forwarded 10.0.2.x address
(``HEARTH_OIDC_UPSTREAM_PORT``) is dialled where that forward leads, ``127.0.0.1:<port>``, with
the issuer's own address as the ``Host``: the guest-only address leads nowhere from the host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from hearth.config import Settings
from hearth.httpclient import async_client
from hearth.logging import get_logger

_log = get_logger("credentials.revoke")
REVOKE_TIMEOUT_S = 10.0


async def revoke_oidc_refresh_tokens(settings: Settings, documents: Sequence[bytes]) -> str:
    """Revoke the refresh token of each of ``documents`` (copies of one ``oidc`` credential:
    the vault's, and what VMs held, whose agent may have rotated it since), each distinct
    token once; ``revoked`` when every one was, else the first other outcome."""
    outcomes = [
        await revoke_oidc_refresh_token(settings, document)
        for document in {_refresh_token(d): d for d in documents}.values()
    ]
    return next((o for o in outcomes if o != "revoked"), "revoked")


def _refresh_token(document: bytes) -> str | bytes:
    """What tells copies apart: the refresh token (a document without one: itself)."""
    try:
        return str(json.loads(document)["refresh_token"])
    except (ValueError, TypeError, KeyError):
        return document


async def revoke_oidc_refresh_token(settings: Settings, document: bytes) -> str:
    """Revoke the refresh token of an ``oidc`` document at the configured issuer; what happened
    (``revoked``, ``no_endpoint``, ``other_issuer``, ``not_configured`` or ``failed: …``)."""
    issuer = (settings.oidc_issuer or "").rstrip("/")
    if not issuer:
        return "not_configured"
    try:  # a VM's copy is whatever the VM answered
        facts = json.loads(document)
        token = str(facts["refresh_token"])
        named = str(facts.get("issuer", "")).rstrip("/")
    except (ValueError, TypeError, KeyError, AttributeError):
        return "failed: the document holds no refresh token"
    if named != issuer:
        _log.warning("oidc_revoke_skipped", reason="the document names another issuer")
        return "other_issuer"
    try:
        async with async_client(timeout=REVOKE_TIMEOUT_S) as client:
            url, host = _dialled(settings, f"{issuer}/.well-known/openid-configuration")
            discovery = await client.get(url, headers=host)
            discovery.raise_for_status()
            endpoint = discovery.json().get("revocation_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                _log.info("oidc_revoke_skipped", reason="discovery names no revocation_endpoint")
                return "no_endpoint"
            url, host = _dialled(settings, endpoint)
            answer = await client.post(
                url,
                headers=host,
                data={
                    "token": token,
                    "token_type_hint": "refresh_token",
                    "client_id": settings.oidc_client_id,
                },
            )
    except (httpx.HTTPError, ValueError) as exc:
        _log.warning("oidc_revoke_failed", error=type(exc).__name__)
        return f"failed: {type(exc).__name__}"
    if answer.status_code != 200:
        _log.warning("oidc_revoke_refused", status=answer.status_code)
        return f"failed: the issuer answered {answer.status_code}"
    _log.info("oidc_refresh_token_revoked")
    return "revoked"


def _dialled(settings: Settings, url: str) -> tuple[str, dict[str, str]]:
    """Where the controller dials ``url`` and the ``Host`` header it sends: a URL at the
    issuer's own address, when guests reach it through ``HEARTH_OIDC_UPSTREAM_PORT``, goes to
    that forward's host end, ``127.0.0.1:<port>``; any other as it is."""
    port = settings.oidc_upstream_port
    target, issuer = urlsplit(url), urlsplit(settings.oidc_issuer or "")
    if port is None or (target.scheme, target.netloc) != (issuer.scheme, issuer.netloc):
        return url, {}
    return target._replace(netloc=f"127.0.0.1:{port}").geturl(), {"Host": target.netloc}
