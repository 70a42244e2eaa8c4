"""The OIDC login's pieces: request validation, PKCE, the authorize URL, discovery, the document.

Discovery is checked against a loopback HTTP server serving crafted documents; the whole login
against the real oidc-provider is in ``tests/integration/test_agent_login.py``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from hearth_agent.errors import InvalidInput
from hearth_agent.oidc import (
    DEFAULT_DEADLINE_S,
    DEFAULT_SCOPE,
    DiscoveryFailed,
    OidcLoginOptions,
    ProviderMetadata,
    TokenExchangeFailed,
    authorize_url,
    build_document,
    discover,
    new_pkce,
    parse_oidc_login,
    pkce_challenge,
)
from hearth_agent.oidc_protocol import UNKNOWN_LIFETIME_S
from hearth_agent.providers import get_provider

ISSUER = "https://id.example.test"
NOW = 1_900_000_000.0
NONCE = "n-0123456789"


def jwt(claims: dict[str, object]) -> str:
    """An unsigned JWT-shaped string carrying ``claims``."""

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def tokens(**changes: object) -> dict[str, object]:
    """A token response as oidc-provider sends it, with ``changes`` applied (None removes)."""
    response: dict[str, object] = {
        "access_token": "at-1",
        "refresh_token": "rt-1",
        "id_token": jwt({"sub": "alice", "nonce": NONCE}),
        "expires_in": 3600,
        "token_type": "Bearer",
        "scope": "openid offline_access",
    }
    for name, value in changes.items():
        if value is None:
            response.pop(name, None)
        else:
            response[name] = value
    return response


# --- request validation -----------------------------------------------------------------------


def test_parse_fills_in_the_defaults() -> None:
    options = parse_oidc_login({"provider": "oidc", "issuer": ISSUER, "client_id": "cli"})

    assert options == OidcLoginOptions(
        issuer=ISSUER,
        client_id="cli",
        scope=DEFAULT_SCOPE,
        callback_port=0,
        deadline_s=DEFAULT_DEADLINE_S,
    )
    assert DEFAULT_SCOPE == "openid offline_access"
    assert DEFAULT_DEADLINE_S == 600


def test_parse_keeps_every_given_option() -> None:
    options = parse_oidc_login(
        {
            "provider": "oidc",
            "issuer": "http://10.0.2.2:8080/realms/test",
            "client_id": "cli",
            "scope": "openid profile offline_access",
            "callback_port": 1455,
            "timeout_s": 30,
        }
    )

    assert options.issuer == "http://10.0.2.2:8080/realms/test"
    assert options.scope == "openid profile offline_access"
    assert (options.callback_port, options.deadline_s) == (1455, 30.0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"issuer": "https://user:pw@id.example.test"}, "issuer"),
        ({"issuer": "https://id.example.test/?tenant=1"}, "issuer"),
        ({"issuer": "https://id.example.test/#x"}, "issuer"),
        ({"issuer": "https:///nohost"}, "issuer"),
        ({"issuer": "https://id.example.test:99999"}, "issuer"),
        ({"issuer": "https://id.example.test/a b"}, "issuer"),
        ({"issuer": "https://id.example.test/" + "a" * 2048}, "issuer"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": "   "}, "client_id"),
        ({"client_id": "cli\n"}, "client_id"),
        ({"scope": ""}, "scope"),
        ({"scope": 'openid "x"'}, "scope"),
        ({"scope": ["openid"]}, "scope"),
        ({"callback_port": -1}, "callback_port"),
        ({"callback_port": 1455.0}, "callback_port"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": 3601}, "timeout_s"),
        ({"timeout_s": "60"}, "timeout_s"),
        ({"client_secret": "s"}, "client_secret"),
    ],
)
def test_parse_refuses_bad_fields_naming_them(change: dict[str, object], field: str) -> None:
    body = {"provider": "oidc", "issuer": ISSUER, "client_id": "cli"} | change

    with pytest.raises(InvalidInput, match=f"'{field}'"):
        parse_oidc_login(body)


# --- PKCE and the authorize URL ---------------------------------------------------------------


def test_pkce_challenge_matches_the_rfc_7636_example() -> None:
    # RFC 7636 appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_new_pkce_verifiers_are_fresh_and_within_the_rfc_bounds() -> None:
    pairs = [new_pkce() for _ in range(20)]

    assert len({verifier for verifier, _ in pairs}) == 20
    for verifier, challenge in pairs:
        assert 43 <= len(verifier) <= 128
        assert set(verifier) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        )
        assert challenge == pkce_challenge(verifier)


def test_authorize_url_appends_to_an_endpoint_that_already_has_a_query() -> None:
    metadata = ProviderMetadata(
        issuer=ISSUER,
        authorization_endpoint=f"{ISSUER}/authorize?tenant=a",
        token_endpoint=f"{ISSUER}/token",
    )
    options = OidcLoginOptions(issuer=ISSUER, client_id="cli id")

    url = authorize_url(
        metadata,
        options,
        redirect_uri="http://127.0.0.1:1455/callback",
        state="s",
        nonce="n",
        code_challenge="c",
    )

    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{ISSUER}/authorize?tenant=a&")
    assert query["tenant"] == ["a"]
    assert query["client_id"] == ["cli id"]
    assert query["redirect_uri"] == ["http://127.0.0.1:1455/callback"]
    assert query["prompt"] == ["consent"]


# --- the credential document ------------------------------------------------------------------


def test_document_follows_the_oidc_format_with_expiry_from_expires_in() -> None:
    document = json.loads(build_document(tokens(), issuer=ISSUER, nonce=NONCE, now=NOW))

    assert document == {
        "access_token": "at-1",
        "refresh_token": "rt-1",
        "id_token": tokens()["id_token"],
        "expires_at": NOW + 3600,
        "issuer": ISSUER,
    }
    assert get_provider("oidc").validate(document) == document


def test_document_without_id_token_or_lifetime_is_valid_and_lives_a_short_while() -> None:
    # expires_in is optional (RFC 6749 5.1). Taken as already expired, it made the refresher
    # refresh on every check, each new document as expired as the last.
    raw = build_document(
        tokens(id_token=None, expires_in=None), issuer=ISSUER, nonce=NONCE, now=NOW
    )

    document = json.loads(raw)
    assert "id_token" not in document
    assert document["expires_at"] == NOW + UNKNOWN_LIFETIME_S


def test_without_expires_in_a_jwt_access_tokens_exp_is_its_lifetime() -> None:
    access = jwt({"sub": "alice", "exp": NOW + 900})
    raw = build_document(
        tokens(access_token=access, expires_in=None), issuer=ISSUER, nonce=NONCE, now=NOW
    )

    assert json.loads(raw)["expires_at"] == NOW + 900


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"refresh_token": None}, "no_refresh_token"),
        ({"access_token": None}, "invalid_token_response"),
        ({"access_token": 5}, "invalid_token_response"),
        ({"expires_in": "3600"}, "invalid_token_response"),
        ({"expires_in": -1}, "invalid_token_response"),
        ({"token_type": "DPoP"}, "unsupported_token_type"),
        ({"id_token": jwt({"sub": "alice", "nonce": "someone-else"})}, "nonce_mismatch"),
        ({"id_token": jwt({"sub": "alice"})}, "nonce_mismatch"),
        ({"id_token": "not-a-jwt"}, "nonce_mismatch"),
        ({"expires_in": 10**400}, "invalid_token_response"),  # float() of it overflowed
        ({"expires_in": 400 * 86400}, "invalid_token_response"),
        # Claims nested past the interpreter's recursion limit (json.loads raised).
        ({"id_token": "e30." + _b64("[" * 100_000 + "]" * 100_000) + ".c2ln"}, "nonce_mismatch"),
    ],
)
def test_unusable_token_responses_fail_with_a_session_error(
    changes: dict[str, object], code: str
) -> None:
    with pytest.raises(TokenExchangeFailed) as failure:
        build_document(tokens(**changes), issuer=ISSUER, nonce=NONCE, now=NOW)

    assert failure.value.code == code
    assert "at-1" not in failure.value.message
    assert "rt-1" not in failure.value.message


# --- discovery --------------------------------------------------------------------------------


class _DiscoveryServer(ThreadingHTTPServer):
    """Answers every GET with ``status`` and ``body``, remembering the paths asked for."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _DiscoveryHandler)
        self.status = 200
        self.body = b""
        self.paths: list[str] = []


class _DiscoveryHandler(BaseHTTPRequestHandler):
    server: _DiscoveryServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def discovery_server() -> Iterator[_DiscoveryServer]:
    """A running discovery server on loopback."""
    server = _DiscoveryServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve(server: _DiscoveryServer, document: object, status: int = 200) -> str:
    """Make ``server`` answer with ``document`` and return its issuer URL."""
    server.status = status
    server.body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return f"http://127.0.0.1:{server.server_address[1]}"


def discovery_document(issuer: str, **changes: object) -> dict[str, object]:
    """A minimal valid discovery document for ``issuer``."""
    document: dict[str, object] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/auth",
        "token_endpoint": f"{issuer}/token",
        "code_challenge_methods_supported": ["S256"],
    }
    document.update(changes)
    return document


def test_discover_reads_the_endpoints_from_the_well_known_document(
    discovery_server: _DiscoveryServer,
) -> None:
    issuer = f"http://127.0.0.1:{discovery_server.server_address[1]}/realm"
    serve(discovery_server, discovery_document(issuer))

    metadata = discover(issuer + "/")

    assert metadata == ProviderMetadata(
        issuer=issuer, authorization_endpoint=f"{issuer}/auth", token_endpoint=f"{issuer}/token"
    )
    assert discovery_server.paths == ["/realm/.well-known/openid-configuration"]


@pytest.mark.parametrize(
    ("document", "status", "message"),
    [
        (None, 404, "answered HTTP 404"),
        (b"<html>", 200, "did not return JSON"),
        ([], 200, "not return a JSON object"),
        ({"issuer": "https://elsewhere.example"}, 200, "names issuer"),
        ({"token_endpoint": None}, 200, "no usable token_endpoint"),
        ({"authorization_endpoint": "javascript:alert(1)"}, 200, "authorization_endpoint"),
        ({"code_challenge_methods_supported": ["plain"]}, 200, "S256"),
    ],
)
def test_discover_refuses_unusable_documents(
    discovery_server: _DiscoveryServer, document: object, status: int, message: str
) -> None:
    issuer = f"http://127.0.0.1:{discovery_server.server_address[1]}"
    if isinstance(document, dict):
        document = {**discovery_document(issuer), **document}
        document = {k: v for k, v in document.items() if v is not None}
    serve(discovery_server, document if document is not None else {}, status)

    with pytest.raises(DiscoveryFailed, match=message) as failure:
        discover(issuer)

    assert failure.value.http_status == 502
    assert failure.value.code == "discovery_failed"
