"""RFC 7009 token revocation at a generic OIDC provider, for a deleted ``oidc`` credential.

The endpoint comes from the issuer's discovery document (``revocation_endpoint``); an issuer
that names none cannot be asked, which is logged, not an error. Only the configured issuer
(``HEARTH_OIDC_ISSUER``) is asked, whatever issuer a document claims, so a stored document can
never make the controller send a token elsewhere. The token is sent in the form body, never in
a URL, and never logged.
"""

from __future__ import annotations

import json

import httpx

from hearth.config import Settings
from hearth.httpclient import async_client
from hearth.logging import get_logger

_log = get_logger("credentials.revoke")
REVOKE_TIMEOUT_S = 10.0


async def revoke_oidc_refresh_token(settings: Settings, document: bytes) -> str:
    """Revoke the refresh token of an ``oidc`` document at the configured issuer; what happened
    (``revoked``, ``no_endpoint``, ``other_issuer``, ``not_configured`` or ``failed: …``)."""
    issuer = (settings.oidc_issuer or "").rstrip("/")
    if not issuer:
        return "not_configured"
    facts = json.loads(document)
    if str(facts.get("issuer", "")).rstrip("/") != issuer:
        _log.warning("oidc_revoke_skipped", reason="the document names another issuer")
        return "other_issuer"
    try:
        async with async_client(timeout=REVOKE_TIMEOUT_S) as client:
            discovery = await client.get(f"{issuer}/.well-known/openid-configuration")
            discovery.raise_for_status()
            endpoint = discovery.json().get("revocation_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                _log.info("oidc_revoke_skipped", reason="discovery names no revocation_endpoint")
                return "no_endpoint"
            answer = await client.post(
                endpoint,
                data={
                    "token": str(facts["refresh_token"]),
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
