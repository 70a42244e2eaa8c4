"""Token-gated links (a login's view, a terminal): the token is shown once and kept as a hash.

A link's token is 192 random bits, minted by ``mint_link_token`` and handed to the caller in
the one answer that creates the link. What the controller keeps, in the store or in memory, is
``link_token_hash`` of it; ``link_token_matches`` checks a presented token against that in
constant time. Nothing logs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

LINK_TOKEN_BYTES = 24


def mint_link_token() -> str:
    """A new unguessable token (URL-safe text)."""
    return secrets.token_urlsafe(LINK_TOKEN_BYTES)


def link_token_hash(token: str) -> str:
    """What is kept of ``token``: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def link_token_matches(token: str, digest: str | None) -> bool:
    """Whether ``token`` is the one whose hash is ``digest`` (False without a digest, or for
    text UTF-8 cannot encode: a lone surrogate, which JSON can carry, is in no minted token)."""
    try:
        presented = link_token_hash(token)
    except UnicodeEncodeError:
        return False
    return bool(digest) and hmac.compare_digest(presented, digest or "")
