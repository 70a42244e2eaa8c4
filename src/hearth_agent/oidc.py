"""Generic OAuth 2.0 / OIDC login: discovery, authorization code with PKCE, a loopback callback.

The shape is the vendor CLIs' (RFC 8252, OAuth for native apps): a public client, a one-shot
HTTP server on ``127.0.0.1:<port>/callback`` inside the VM, the authorize URL opened in the VM's
browser, and the code exchanged at the token endpoint with the PKCE verifier. The result is the
agent's ``oidc`` credential document ``{access_token, refresh_token, id_token?, expires_at,
issuer}``, validated by the provider table before it is captured.

Unlike some vendor CLIs, one bad callback (wrong ``state``, another issuer) does not abort the
login: it is answered 400 and the server keeps waiting for the real one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import http.client
import json
import re
import secrets
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from hearth_agent.errors import AgentError, InvalidDocument, InvalidInput
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginSession, proxy_field, timeout_field
from hearth_agent.providers import get_provider

PROVIDER = "oidc"
DEFAULT_SCOPE = "openid offline_access"
DEFAULT_DEADLINE_S = 600.0
MAX_DEADLINE_S = 3600.0
HTTP_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024
CALLBACK_HOST = "127.0.0.1"
CALLBACK_PATH = "/callback"
CALLBACK_SOCKET_TIMEOUT_S = 30.0
MAX_URL_CHARS = 2048
MAX_CLIENT_ID_CHARS = 512
MAX_SCOPE_CHARS = 1024
START_FIELDS = frozenset(
    {"provider", "issuer", "client_id", "scope", "callback_port", "timeout_s", "proxy"}
)

# RFC 6749 appendix A: scope tokens are NQCHARs separated by single spaces; client ids VSCHARs.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
_CLIENT_ID = re.compile(r"[\x20-\x7e]+")
# What an OAuth error code from the network may look like before it is logged or reported.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class DiscoveryFailed(AgentError):
    """The issuer's discovery document could not be fetched or is unusable (502)."""

    code = "discovery_failed"
    http_status = 502


class CallbackPortUnavailable(AgentError):
    """The requested loopback callback port cannot be bound, usually because it is in use (409)."""

    code = "callback_port_unavailable"
    http_status = 409


class TokenExchangeFailed(AgentError):
    """The code could not be turned into a usable ``oidc`` document; ``code`` is the session error.

    Raised and handled in the callback thread: it fails the session, it never reaches HTTP.
    """

    http_status = 502

    def __init__(self, message: str, *, code: str = "token_exchange_failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, kw_only=True)
class OidcLoginOptions:
    """A validated ``POST /login/start`` body for the ``oidc`` provider."""

    issuer: str
    client_id: str
    scope: str = DEFAULT_SCOPE
    callback_port: int = 0  # 0: an ephemeral port
    deadline_s: float = DEFAULT_DEADLINE_S
    # The Browser VM's egress proxy (CONNECT only, so https issuers); None: direct.
    proxy: str | None = None


@dataclass(frozen=True)
class ProviderMetadata:
    """What the agent uses from the issuer's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str


@dataclass(frozen=True)
class CallbackPage:
    """The page the browser shows after a redirect to the callback."""

    status: int
    title: str
    message: str


def _is_web_url(value: str) -> bool:
    """An absolute http(s) URL with a host; no credentials, fragment, space or control char."""
    if not value or len(value) > MAX_URL_CHARS or not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and not parts.fragment
    )


def parse_oidc_login(body: Mapping[str, object]) -> OidcLoginOptions:
    """Validate the fields of an ``oidc`` login request; InvalidInput names the offending field."""
    unknown = sorted(set(body) - START_FIELDS)
    if unknown:
        raise InvalidInput(
            f"field '{unknown[0]}' is not accepted; expected provider, issuer, client_id, "
            "scope, callback_port, timeout_s and proxy"
        )
    for name in ("issuer", "client_id"):
        if name not in body:
            raise InvalidInput(f"field '{name}' is required")
    issuer = body["issuer"]
    if not isinstance(issuer, str) or not _is_web_url(issuer) or urlsplit(issuer).query:
        raise InvalidInput(
            f"field 'issuer' must be an http or https URL without query or fragment "
            f"(at most {MAX_URL_CHARS} characters)"
        )
    client_id = body["client_id"]
    if (
        not isinstance(client_id, str)
        or not client_id.strip()
        or len(client_id) > MAX_CLIENT_ID_CHARS
        or not _CLIENT_ID.fullmatch(client_id)
    ):
        raise InvalidInput(
            f"field 'client_id' must be a non-blank string of at most {MAX_CLIENT_ID_CHARS} "
            "printable ASCII characters"
        )
    scope = body.get("scope", DEFAULT_SCOPE)
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_CHARS or not _SCOPE.fullmatch(scope):
        raise InvalidInput(
            f"field 'scope' must be scope tokens separated by single spaces, e.g. {DEFAULT_SCOPE!r}"
        )
    callback_port = body.get("callback_port", 0)
    if (
        isinstance(callback_port, bool)
        or not isinstance(callback_port, int)
        or not 0 <= callback_port <= 65535
    ):
        raise InvalidInput("field 'callback_port' must be an integer from 1 to 65535 (0: any)")
    deadline_s = timeout_field(body, default=DEFAULT_DEADLINE_S, maximum=MAX_DEADLINE_S)
    return OidcLoginOptions(
        issuer=issuer,
        client_id=client_id,
        scope=scope,
        callback_port=callback_port,
        deadline_s=deadline_s,
        proxy=proxy_field(body),
    )


def _describe(exc: BaseException) -> str:
    """A short reason for a network failure, without the URL's query or any body."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _describe(exc.reason)
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

    With ``proxy`` the request goes through it (an https URL as a CONNECT tunnel). HTTP error
    statuses are returned, not raised: an OAuth error response carries its reason.
    """
    if proxy is None:
        opener = urllib.request.build_opener()
    else:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": proxy, "https": proxy})
        )
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
        raise DiscoveryFailed(f"OIDC discovery at {url} failed: {_describe(exc)}") from exc
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
        if not isinstance(value, str) or not _is_web_url(value):
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


def _oauth_error_code(value: object, default: str) -> str:
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
    form = urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": options.client_id,
            "code_verifier": code_verifier,
        }
    ).encode("ascii")
    # Discovery only accepts http(s) endpoints.
    request = urllib.request.Request(  # noqa: S310
        metadata.token_endpoint,
        data=form,
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    try:
        status, body = _fetch(request, timeout_s, proxy=options.proxy)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise TokenExchangeFailed(f"token endpoint unreachable: {_describe(exc)}") from exc
    try:
        response = decode_json(body)
    except JsonTextError as exc:
        raise TokenExchangeFailed(
            f"token endpoint answered HTTP {status} without JSON", code="invalid_token_response"
        ) from exc
    if status != 200:
        error = response.get("error") if isinstance(response, dict) else None
        raise TokenExchangeFailed(
            f"token endpoint answered HTTP {status} (error {_oauth_error_code(error, 'unknown')!r})"
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
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def build_document(tokens: Mapping[str, object], *, issuer: str, nonce: str, now: float) -> bytes:
    """The ``oidc`` credential document for a token response, validated, as JSON bytes.

    The id_token's signature is not checked: it came straight from the token endpoint the
    discovery named (OIDC Core 3.1.3.7 allows trusting that channel); its ``nonce`` still has
    to be ours.
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
    expires_in = tokens.get("expires_in")
    if expires_in is None:
        # Unknown lifetime: treat the access token as already expired, so the first use refreshes.
        lifetime = 0.0
    elif isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in < 0:
        raise TokenExchangeFailed(
            "token response has an invalid expires_in", code="invalid_token_response"
        )
    else:
        lifetime = float(expires_in)
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
        if claims is None or not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise TokenExchangeFailed(
                "id_token does not carry this login's nonce", code="nonce_mismatch"
            )
        document["id_token"] = id_token
    document["expires_at"] = round(now + lifetime, 3)
    document["issuer"] = issuer
    try:
        get_provider(PROVIDER).validate(document)
    except InvalidDocument as exc:
        raise TokenExchangeFailed(exc.message, code="invalid_token_response") from exc
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _single(query: Mapping[str, list[str]], name: str) -> str | None:
    """A query parameter that must appear once; None if absent or repeated."""
    values = query.get(name)
    return values[0] if values is not None and len(values) == 1 else None


class _CallbackHandler(BaseHTTPRequestHandler):
    """Answers the browser's redirect to ``/callback``; every other path is 404."""

    protocol_version = "HTTP/1.1"
    server_version = "hearth-agent-login"
    timeout = CALLBACK_SOCKET_TIMEOUT_S
    server: _CallbackServer

    def do_GET(self) -> None:
        """Handle the redirect."""
        split = urlsplit(self.path)
        if split.path != CALLBACK_PATH:
            page = CallbackPage(404, "Not found", "This is the sign-in callback of a login.")
        else:
            page = self.server.on_callback(parse_qs(split.query, keep_blank_values=True))
        body = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(page.title)}</title></head>\n"
            f"<body><h1>{html.escape(page.title)}</h1>\n<p>{html.escape(page.message)}</p>"
            "</body></html>\n"
        ).encode()
        self.send_response(page.status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def version_string(self) -> str:
        """The Server header: no Python version."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request line carries the authorization code and state."""


class _CallbackServer(ThreadingHTTPServer):
    """The loopback server the provider redirects the browser to."""

    daemon_threads = True

    def __init__(
        self, port: int, *, on_callback: Callable[[Mapping[str, list[str]]], CallbackPage]
    ) -> None:
        self.on_callback = on_callback
        super().__init__((CALLBACK_HOST, port), _CallbackHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])


@dataclass(frozen=True)
class _Flow:
    """What one authorization request committed to; fixed before the callback server serves."""

    session: LoginSession
    metadata: ProviderMetadata
    redirect_uri: str
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)


class OidcLoginRunner:
    """Runs one ``oidc`` login (see ``hearth_agent.login`` for the runner contract)."""

    def __init__(
        self,
        *,
        options: OidcLoginOptions,
        logger: JsonLogger,
        clock: Callable[[], float] = time.time,
        http_timeout_s: float = HTTP_TIMEOUT_S,
    ) -> None:
        self._options = options
        self._logger = logger
        self._clock = clock
        self._http_timeout_s = http_timeout_s
        self._lock = threading.Lock()
        self._flow: _Flow | None = None
        self._server: _CallbackServer | None = None
        self._serving: threading.Thread | None = None
        self._answered = False
        self._stopped = False

    @classmethod
    def from_request(cls, body: Mapping[str, object], *, logger: JsonLogger) -> OidcLoginRunner:
        """A runner for a ``POST /login/start`` body; InvalidInput names a bad field."""
        return cls(options=parse_oidc_login(body), logger=logger)

    @property
    def options(self) -> OidcLoginOptions:
        """The validated request."""
        return self._options

    @property
    def deadline_s(self) -> float:
        """Seconds the user has to finish."""
        return self._options.deadline_s

    @property
    def callback_port(self) -> int | None:
        """The bound callback port once started."""
        server = self._server
        return None if server is None else server.port

    def start(self, session: LoginSession) -> str:
        """Discover the issuer, open the callback server, and return the authorize URL."""
        metadata = discover(
            self._options.issuer, timeout_s=self._http_timeout_s, proxy=self._options.proxy
        )
        try:
            server = _CallbackServer(self._options.callback_port, on_callback=self._on_callback)
        except OSError as exc:
            raise CallbackPortUnavailable(
                f"cannot listen on {CALLBACK_HOST}:{self._options.callback_port} for the "
                f"callback: {_describe(exc)}"
            ) from exc
        redirect_uri = f"http://{CALLBACK_HOST}:{server.port}{CALLBACK_PATH}"
        code_verifier, code_challenge = new_pkce()
        flow = _Flow(
            session=session,
            metadata=metadata,
            redirect_uri=redirect_uri,
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=code_verifier,
        )
        with self._lock:
            if self._stopped:
                server.server_close()
                raise CallbackPortUnavailable("the login was stopped while it was starting")
            self._flow, self._server = flow, server
            self._serving = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="oidc-callback",
                daemon=True,
            )
            self._serving.start()
        self._logger.info(
            "oidc_login_waiting",
            login_id=session.login_id,
            issuer=metadata.issuer,
            callback_port=server.port,
        )
        return authorize_url(
            metadata,
            self._options,
            redirect_uri=redirect_uri,
            state=flow.state,
            nonce=flow.nonce,
            code_challenge=code_challenge,
        )

    def cancel(self) -> None:
        """Stop the callback server and close its port; idempotent."""
        with self._lock:
            self._stopped = True
            server, serving = self._server, self._serving
            self._server, self._serving = None, None
        if server is None:
            return
        try:
            if serving is not None:
                server.shutdown()
            server.server_close()
        except OSError as exc:
            self._logger.warning("oidc_callback_close_failed", reason=_describe(exc))

    def _reject(self, flow: _Flow, reason: str, message: str) -> CallbackPage:
        self._logger.warning(
            "oidc_callback_rejected", login_id=flow.session.login_id, reason=reason
        )
        return CallbackPage(400, "Sign-in response rejected", message)

    def _on_callback(self, query: Mapping[str, list[str]]) -> CallbackPage:
        """Handle one redirect: reject strangers and keep waiting, or finish the login."""
        flow = self._flow
        if flow is None:
            return CallbackPage(503, "Not ready", "The login is still starting.")
        state = _single(query, "state")
        if state is None or not hmac.compare_digest(state.encode(), flow.state.encode()):
            return self._reject(
                flow,
                "state_mismatch",
                "This response does not belong to the login in progress. Finish signing in "
                "in the window the login opened.",
            )
        # RFC 9207: a response naming another issuer is a mix-up, not ours to redeem.
        issuer = _single(query, "iss")
        if issuer is not None and issuer != flow.metadata.issuer:
            return self._reject(
                flow, "issuer_mismatch", "This response comes from another sign-in server."
            )
        error, code = _single(query, "error"), _single(query, "code")
        if error is None and not code:
            return self._reject(flow, "no_code", "This response carries no authorization code.")
        with self._lock:
            answered, self._answered = self._answered, True
        if answered:
            return CallbackPage(
                409, "Sign-in already finished", "This login already received its answer."
            )
        if error is not None:
            reported = _oauth_error_code(error, "authorization_failed")
            flow.session.fail(reported)
            self._logger.warning(
                "oidc_authorization_failed", login_id=flow.session.login_id, error=reported
            )
            return CallbackPage(
                200,
                "Sign-in failed",
                f"The sign-in server reported {reported!r}. Close this window and start again.",
            )
        assert code is not None  # checked above; narrows for the type checker
        return self._redeem(flow, code)

    def _redeem(self, flow: _Flow, code: str) -> CallbackPage:
        try:
            tokens = exchange_code(
                flow.metadata,
                self._options,
                code=code,
                code_verifier=flow.code_verifier,
                redirect_uri=flow.redirect_uri,
                timeout_s=self._http_timeout_s,
            )
            document = build_document(
                tokens, issuer=flow.metadata.issuer, nonce=flow.nonce, now=self._clock()
            )
        except TokenExchangeFailed as exc:
            flow.session.fail(exc.code)
            self._logger.warning(
                "oidc_token_exchange_failed",
                login_id=flow.session.login_id,
                error=exc.code,
                message=exc.message,
            )
            return CallbackPage(
                502, "Sign-in failed", "The sign-in could not be completed. Start the login again."
            )
        if not flow.session.capture(document):
            return CallbackPage(
                409,
                "Sign-in no longer in progress",
                "This login was cancelled or timed out before it finished.",
            )
        return CallbackPage(200, "Signed in", "You can close this window.")
