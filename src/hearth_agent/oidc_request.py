"""The ``oidc`` login's start request: its fields, validated into ``OidcLoginOptions``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from hearth_agent.errors import InvalidInput
from hearth_agent.login import proxy_field, timeout_field

PROVIDER = "oidc"
DEFAULT_SCOPE = "openid offline_access"
DEFAULT_DEADLINE_S = 600.0
MAX_DEADLINE_S = 3600.0
MAX_URL_CHARS = 2048
MAX_CLIENT_ID_CHARS = 512
MAX_SCOPE_CHARS = 1024
START_FIELDS = frozenset(
    {"provider", "issuer", "client_id", "scope", "callback_port", "timeout_s", "proxy"}
)

# RFC 6749 appendix A: scope tokens are NQCHARs separated by single spaces; client ids VSCHARs.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
_CLIENT_ID = re.compile(r"[\x20-\x7e]+")


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


def is_web_url(value: str) -> bool:
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
    if not isinstance(issuer, str) or not is_web_url(issuer) or urlsplit(issuer).query:
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
