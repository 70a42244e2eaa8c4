"""Credential documents with made-up tokens, valid as the agent checks them, one per provider.

A stand-in accepts exactly the access token of the document delivered into the CLI's home, so
``hearth bench run`` and the tests make one here, capture it with the product's
``CredentialService`` and deliver it with the auth flow's own code. The tokens are not secrets:
``marker`` only keeps two documents apart. Codex insists on JWT-shaped tokens (it reads the
claims, never checks a signature), so its tokens carry claims and no signature.
"""

from __future__ import annotations

import base64
import json

CODEX_ACCESS_EXP = 2_000_000_000  # the codex access token's ``exp``: far in the future


def unsigned_jwt(claims: dict[str, object]) -> str:
    """A JWT-shaped string (header.payload.signature) carrying ``claims``; not signed."""

    def part(obj: object) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()
        return raw.rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def sample_document(provider: str, marker: str = "m") -> dict[str, object]:
    """A valid credential document for ``provider``; ``marker`` makes its secrets unique."""
    if provider == "claude_code":
        return {
            "claudeAiOauth": {
                "accessToken": f"sk-ant-oat01-access-{marker}",
                "refreshToken": f"sk-ant-ort01-refresh-{marker}",
                "expiresAt": 1_900_000_000_000,
                "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "max",
            }
        }
    if provider == "codex":
        return {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": unsigned_jwt({"sub": f"user-{marker}"}),
                "access_token": unsigned_jwt({"exp": CODEX_ACCESS_EXP, "jti": marker}),
                "refresh_token": f"rt-codex-refresh-{marker}",
                "account_id": "acct-1",
            },
            "last_refresh": "2026-01-01T00:00:00Z",
        }
    if provider == "gemini_cli":
        return {
            "access_token": f"ya29.gemini-access-{marker}",
            "refresh_token": f"1//gemini-refresh-{marker}",
            "scope": "openid https://www.googleapis.com/auth/cloud-platform",
            "token_type": "Bearer",
            "id_token": unsigned_jwt({"sub": marker}),
            "expiry_date": 1_900_000_000_500,
        }
    if provider == "oidc":
        return {
            "access_token": f"oidc-access-{marker}",
            "refresh_token": f"oidc-refresh-{marker}",
            "expires_at": 1_900_000_000.25,
            "issuer": "https://id.example.test",
        }
    raise ValueError(provider)
