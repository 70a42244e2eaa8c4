"""``X-Hearth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``.

A receiver recomputes the HMAC with the webhook's secret over the timestamp, a dot and the raw
body as received, compares in constant time, and refuses a timestamp too far from its clock
(replays). :func:`verify` does exactly that, for receivers written in Python and for the tests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
DEFAULT_TOLERANCE_S = 300


def new_secret() -> str:
    """A fresh signing secret (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The header value for ``body`` sent at ``timestamp`` (default: now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    secret: str, body: bytes, header: str, *, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, within ``tolerance_s`` of now."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    # In integers: a float cannot hold every timestamp a forged header may carry.
    if abs(int(time.time()) - timestamp) > tolerance_s:
        return False
    # As bytes: compare_digest refuses str holding other than ASCII (a forged v1 may).
    given = parts.get("v1", "").encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, _mac(secret, timestamp, body).encode("ascii"))
