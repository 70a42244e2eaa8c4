"""The OAuth 2.0 / OIDC protocol steps: discovery, PKCE, authorize URL, code exchange, refresh,
the document."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from hearth_agent.errors import AgentError, InvalidDocument
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.oidc_request import PROVIDER, OidcLoginOptions, is_web_url
from hearth_agent.providers import get_provider

HTTP_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024
# An access token whose lifetime nobody told (no expires_in, not a JWT with exp) is refreshed
# as one of this lifetime would be; a lifetime past a year is not believed.
UNKNOWN_LIFETIME_S = 300.0
MAX_LIFETIME_S = 366 * 86400.0
# What an OAuth error code from the network may look like before it is logged or reported.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class DiscoveryFailed(AgentError, code="discovery_failed", http_status=502):
    """The issuer's discovery document could not be fetched or is unusable (502)."""


class TokenExchangeFailed(AgentError, http_status=502):
    """The code could not be turned into a usable ``oidc`` document; ``code`` is the session error.

    Raised and handled in the callback thread: it fails the session, it never reaches HTTP.
    """

    def __init__(
        self, message: str, *, code: str = "token_exchange_failed", oauth_error: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        # The token endpoint's own ``error`` (RFC 6749 section 5.2), e.g. ``invalid_grant``.
        self.oauth_error = oauth_error


@dataclass(frozen=True)
class ProviderMetadata:
    """What the agent uses from the issuer's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str


def describe_failure(exc: BaseException) -> str:
    """A short reason for a network failure, without the URL's query or any body."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return describe_failure(exc.reason)
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], str):
        # e.g. "Tunnel connection failed: 403 Forbidden" from a proxy; carries no URL or body.
        return exc.args[0][:200]
    return type(exc).__name__


def _fetch(
    request: urllib.request.Request, timeout_s: float, *, proxy: str | None = None
) -> tuple[int, bytes]:
    """Send ``request`` (its URL already checked to be http or https); status and bounded body.

    With ``proxy`` the request goes through it as a CONNECT tunnel, an http URL too (the
    VMs' egress proxies only tunnel). HTTP error statuses are returned, not raised: an OAuth
    error response carries its reason.
    """
    if proxy is not None and urlsplit(request.full_url).scheme == "http":
        return _fetch_tunnelled(request, timeout_s, proxy)
    if proxy is None:
        opener = urllib.request.build_opener()
    else:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy}))
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        response = exc
    with response:
        body = response.read(MAX_RESPONSE_BYTES + 1)
        status = int(response.status or 0)
    if len(body) > MAX_RESPONSE_BYTES:
        raise ValueError(f"response is larger than {MAX_RESPONSE_BYTES} bytes")
    return status, body


def _fetch_tunnelled(
    request: urllib.request.Request, timeout_s: float, proxy: str
) -> tuple[int, bytes]:
    """``_fetch`` of a plain http URL through a CONNECT tunnel of ``proxy``."""
    target, through = urlsplit(request.full_url), urlsplit(proxy)
    connection = http.client.HTTPConnection(
        through.hostname or "", through.port or 80, timeout=timeout_s
    )
    try:
        connection.set_tunnel(target.hostname or "", target.port or 80)
        path = target.path or "/"
        connection.request(
            request.get_method(),
            f"{path}?{target.query}" if target.query else path,
            body=request.data,
            headers=dict(request.header_items()),
        )
        response = connection.getresponse()
        body = response.read(MAX_RESPONSE_BYTES + 1)
        status = response.status
    finally:
        connection.close()
    if len(body) > MAX_RESPONSE_BYTES:
        raise ValueError(f"response is larger than {MAX_RESPONSE_BYTES} bytes")
    return status, body


def discover(
    issuer: str, *, timeout_s: float = HTTP_TIMEOUT_S, proxy: str | None = None
) -> ProviderMetadata:
    """Fetch and check ``{issuer}/.well-known/openid-configuration``; DiscoveryFailed says why."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    # The issuer was checked to be an http(s) URL when the request was parsed.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        status, body = _fetch(request, timeout_s, proxy=proxy)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DiscoveryFailed(f"OIDC discovery at {url} failed: {describe_failure(exc)}") from exc
    if status != 200:
        raise DiscoveryFailed(f"OIDC discovery at {url} answered HTTP {status}")
    try:
        document = decode_json(body)
    except JsonTextError as exc:
        raise DiscoveryFailed(f"OIDC discovery at {url} did not return JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DiscoveryFailed(f"OIDC discovery at {url} did not return a JSON object")
    # OpenID Connect Discovery 1.0 section 4.3: the document must name the issuer it was asked for.
    found = document.get("issuer")
    if not isinstance(found, str) or found.rstrip("/") != issuer.rstrip("/"):
        raise DiscoveryFailed(
            f"OIDC discovery at {url} names issuer {str(found)[:200]!r}, not {issuer!r}"
        )
    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint"):
        value = document.get(name)
        if not isinstance(value, str) or not is_web_url(value):
            raise DiscoveryFailed(f"OIDC discovery at {url} has no usable {name}")
        endpoints[name] = value
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise DiscoveryFailed(f"issuer {issuer!r} does not support PKCE with S256")
    return ProviderMetadata(
        issuer=found,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier: BASE64URL(SHA256(verifier)), unpadded."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_pkce() -> tuple[str, str]:
    """A fresh PKCE verifier (86 characters, RFC 7636 allows 43 to 128) and its challenge."""
    verifier = secrets.token_urlsafe(64)
    return verifier, pkce_challenge(verifier)


def authorize_url(
    metadata: ProviderMetadata,
    options: OidcLoginOptions,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_challenge: str,
) -> str:
    """The authorization request the user's browser is sent to.

    ``prompt=consent`` because providers (oidc-provider among them) issue a refresh token for
    ``offline_access`` only when consent was asked for explicitly.
    """
    query = urlencode(
        {
            "response_type": "code",
            "client_id": options.client_id,
            "redirect_uri": redirect_uri,
            "scope": options.scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "prompt": "consent",
        }
    )
    separator = "&" if urlsplit(metadata.authorization_endpoint).query else "?"
    return f"{metadata.authorization_endpoint}{separator}{query}"


def oauth_error_code(value: object, default: str) -> str:
    """An OAuth ``error`` value if it looks like one, else ``default`` (never echo junk)."""
    return value if isinstance(value, str) and _ERROR_CODE.fullmatch(value) else default


def exchange_code(
    metadata: ProviderMetadata,
    options: OidcLoginOptions,
    *,
    code: str,
    code_verifier: str,
    redirect_uri: str,
    timeout_s: float = HTTP_TIMEOUT_S,
) -> dict[str, object]:
    """Redeem the authorization code as a public client; the decoded token response."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": options.client_id,
        "code_verifier": code_verifier,
    }
    return _token_request(metadata.token_endpoint, form, timeout_s=timeout_s, proxy=options.proxy)


def refresh_grant(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    refresh_token: str,
    timeout_s: float = HTTP_TIMEOUT_S,
    proxy: str | None = None,
) -> dict[str, object]:
    """Trade a refresh token for new tokens as a public client (RFC 6749 section 6); a refusal
    raises TokenExchangeFailed whose ``oauth_error`` says why (``invalid_grant``: the grant is
    gone, whoever asks)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return _token_request(metadata.token_endpoint, form, timeout_s=timeout_s, proxy=proxy)


def _token_request(
    token_endpoint: str, form: Mapping[str, str], *, timeout_s: float, proxy: str | None
) -> dict[str, object]:
    """POST ``form`` to the token endpoint; the decoded JSON object it answers with 200."""
    # Discovery only accepts http(s) endpoints.
    request = urllib.request.Request(  # noqa: S310
        token_endpoint,
        data=urlencode(form).encode("ascii"),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    try:
        status, body = _fetch(request, timeout_s, proxy=proxy)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise TokenExchangeFailed(f"token endpoint unreachable: {describe_failure(exc)}") from exc
    try:
        response = decode_json(body)
    except JsonTextError as exc:
        raise TokenExchangeFailed(
            f"token endpoint answered HTTP {status} without JSON", code="invalid_token_response"
        ) from exc
    if status != 200:
        error = oauth_error_code(
            response.get("error") if isinstance(response, dict) else None, "unknown"
        )
        raise TokenExchangeFailed(
            f"token endpoint answered HTTP {status} (error {error!r})", oauth_error=error
        )
    if not isinstance(response, dict):
        raise TokenExchangeFailed(
            "token response is not a JSON object", code="invalid_token_response"
        )
    return response


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified, or None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = decode_json(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, JsonTextError):
        return None
    return claims if isinstance(claims, dict) else None


def _lifetime(tokens: Mapping[str, object], access_token: str, now: float) -> float:
    """How long the access token lives, in seconds: the response's ``expires_in``, which RFC 6749
    (5.1) makes optional; without it, a JWT access token's ``exp``, else ``UNKNOWN_LIFETIME_S``."""
    expires_in = tokens.get("expires_in")
    if expires_in is None:
        claims = _jwt_claims(access_token) or {}
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return UNKNOWN_LIFETIME_S
        return max(0.0, min(float(exp) - now, MAX_LIFETIME_S))
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not 0 <= expires_in <= MAX_LIFETIME_S
    ):
        raise TokenExchangeFailed(
            "token response has an invalid expires_in", code="invalid_token_response"
        )
    return float(expires_in)


def build_document(
    tokens: Mapping[str, object],
    *,
    issuer: str,
    nonce: str | None,
    now: float,
    client_id: str | None = None,
) -> bytes:
    """The ``oidc`` credential document for a token response, validated, as JSON bytes.

    The id_token's signature is not checked: it came straight from the token endpoint the
    discovery named (OIDC Core 3.1.3.7 allows trusting that channel); its ``nonce`` still has
    to be ours (``nonce`` None: a refresh, whose id_token need not carry one, OIDC Core 12.2).
    ``client_id`` is kept in the document: the refresh needs it.
    """
    access_token = tokens.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TokenExchangeFailed(
            "token response has no access_token", code="invalid_token_response"
        )
    refresh_token = tokens.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise TokenExchangeFailed(
            "token response has no refresh_token: the scope needs offline_access and the "
            "provider must allow it for this client",
            code="no_refresh_token",
        )
    token_type = tokens.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenExchangeFailed(
            "token response is not a bearer token", code="unsupported_token_type"
        )
    lifetime = _lifetime(tokens, access_token, now)
    document: dict[str, object] = {
        "access_token": access_token,
        "refresh_token": refresh_token,
    }
    id_token = tokens.get("id_token")
    if id_token is not None:
        if not isinstance(id_token, str):
            raise TokenExchangeFailed(
                "token response has an invalid id_token", code="invalid_token_response"
            )
        claims = _jwt_claims(id_token)
        if claims is None or (
            nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce)
        ):
            raise TokenExchangeFailed(
                "id_token does not carry this login's nonce", code="nonce_mismatch"
            )
        document["id_token"] = id_token
    document["expires_at"] = round(now + lifetime, 3)
    document["issuer"] = issuer
    if client_id is not None:
        document["client_id"] = client_id
    try:
        get_provider(PROVIDER).validate(document)
    except InvalidDocument as exc:
        raise TokenExchangeFailed(exc.message, code="invalid_token_response") from exc
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def refreshed_document(
    previous: Mapping[str, object], tokens: Mapping[str, object], *, now: float
) -> bytes:
    """The ``oidc`` document after a refresh: the new tokens, and from ``previous`` the issuer,
    the client id and whatever the response left out (a refresh token that did not rotate, the
    id_token)."""
    kept = {name: previous[name] for name in ("refresh_token", "id_token") if name in previous}
    return build_document(
        {**kept, **tokens},
        issuer=str(previous["issuer"]),
        nonce=None,
        now=now,
        client_id=str(previous["client_id"]) if "client_id" in previous else None,
    )
