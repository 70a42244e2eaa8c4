"""Generic OAuth 2.0 / OIDC login: discovery, authorization code with PKCE, a loopback callback.

The shape is the vendor CLIs' (RFC 8252, OAuth for native apps): a public client, a one-shot
HTTP server on ``127.0.0.1:<port>/callback`` inside the VM, the authorize URL opened in the VM's
browser, and the code exchanged at the token endpoint with the PKCE verifier. The result is the
agent's ``oidc`` credential document ``{access_token, refresh_token, id_token?, expires_at,
issuer}``, validated by the provider table before it is captured.

Unlike some vendor CLIs, one bad callback (wrong ``state``, another issuer) does not abort the
login: it is answered 400 and the server keeps waiting for the real one.

This module runs the login; its pieces are ``oidc_request`` (the start request's fields),
``oidc_protocol`` (discovery, PKCE, the code exchange, the document) and ``oidc_callback`` (the
loopback server), whose public names it re-exports.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginSession
from hearth_agent.oidc_callback import (
    CALLBACK_HOST,
    CALLBACK_PATH,
    CallbackPage,
    CallbackPortUnavailable,
    CallbackServer,
    single_param,
)
from hearth_agent.oidc_protocol import (
    HTTP_TIMEOUT_S,
    DiscoveryFailed,
    ProviderMetadata,
    TokenExchangeFailed,
    authorize_url,
    build_document,
    describe_failure,
    discover,
    exchange_code,
    new_pkce,
    oauth_error_code,
    pkce_challenge,
)
from hearth_agent.oidc_request import (
    DEFAULT_DEADLINE_S,
    DEFAULT_SCOPE,
    PROVIDER,
    OidcLoginOptions,
    parse_oidc_login,
)

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_SCOPE",
    "PROVIDER",
    "CallbackPage",
    "CallbackPortUnavailable",
    "DiscoveryFailed",
    "OidcLoginOptions",
    "OidcLoginRunner",
    "ProviderMetadata",
    "TokenExchangeFailed",
    "authorize_url",
    "build_document",
    "discover",
    "exchange_code",
    "new_pkce",
    "parse_oidc_login",
    "pkce_challenge",
]


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
        self._server: CallbackServer | None = None
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
            server = CallbackServer(self._options.callback_port, on_callback=self._on_callback)
        except OSError as exc:
            raise CallbackPortUnavailable(
                f"cannot listen on {CALLBACK_HOST}:{self._options.callback_port} for the "
                f"callback: {describe_failure(exc)}"
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
            self._logger.warning("oidc_callback_close_failed", reason=describe_failure(exc))

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
        state = single_param(query, "state")
        if state is None or not hmac.compare_digest(state.encode(), flow.state.encode()):
            return self._reject(
                flow,
                "state_mismatch",
                "This response does not belong to the login in progress. Finish signing in "
                "in the window the login opened.",
            )
        # RFC 9207: a response naming another issuer is a mix-up, not ours to redeem.
        issuer = single_param(query, "iss")
        if issuer is not None and issuer != flow.metadata.issuer:
            return self._reject(
                flow, "issuer_mismatch", "This response comes from another sign-in server."
            )
        error, code = single_param(query, "error"), single_param(query, "code")
        if error is None and not code:
            return self._reject(flow, "no_code", "This response carries no authorization code.")
        with self._lock:
            answered, self._answered = self._answered, True
        if answered:
            return CallbackPage(
                409, "Sign-in already finished", "This login already received its answer."
            )
        if error is not None:
            reported = oauth_error_code(error, "authorization_failed")
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
                tokens,
                issuer=flow.metadata.issuer,
                nonce=flow.nonce,
                now=self._clock(),
                client_id=self._options.client_id,
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
