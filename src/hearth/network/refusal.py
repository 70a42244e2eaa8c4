"""How the egress proxy refuses a request: the outcome it is counted under, and the HTTP error
answer, written so the client gets to read it."""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from http import HTTPStatus

from hearth.network.tunnel import CHUNK, CLOSE_GRACE

_LINGER_BYTES = 64 * 1024  # unread request bytes swallowed after a refusal, so no RST eats it


class EgressOutcome(StrEnum):
    """How one proxy request ended: the ``outcome`` label of ``hearth_egress_requests_total``."""

    TUNNELED = "tunneled"  # 200 sent; bytes piped until the tunnel closed
    DENIED_HOST = "denied_host"  # 403: host:port is not on the allowlist
    DENIED_ADDRESS = "denied_address"  # 403: the target resolved to a non-public or node address
    # After the 200 (also counted as tunneled): the tunnel's TLS ClientHello asked for another
    # name than the CONNECT target, none, or was malformed; cut before it reached the upstream.
    DENIED_SERVER_NAME = "denied_server_name"
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405: plain-HTTP proxying (GET http://...)
    BAD_REQUEST = "bad_request"  # 400: malformed request line or headers, or head too large
    CLIENT_TIMEOUT = "client_timeout"  # 408: the request head did not arrive in time
    UPSTREAM_FAILED = "upstream_failed"  # 502: the name did not resolve or the connect failed
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504: resolve + connect missed the deadline
    # 503: the proxy already holds max_connections; past twice that, reset without an answer
    OVERLOADED = "overloaded"


# Refusals of what the policy forbids: logged as warnings (``egress_denied``).
DENIALS = frozenset(
    {EgressOutcome.DENIED_HOST, EgressOutcome.DENIED_ADDRESS, EgressOutcome.DENIED_SERVER_NAME}
)


class Refusal(Exception):
    """A request the proxy answers with an error status; never leaves the proxy."""

    def __init__(
        self,
        status: int,
        outcome: EgressOutcome,
        reason: str,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.outcome = outcome
        self.reason = reason  # fixed text: never echoes what the client sent
        self.host = host
        self.port = port


async def send_refusal(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusal: Refusal
) -> None:
    """Answer ``refusal`` as an HTTP error (405 with ``Allow: CONNECT``) and half-close; swallow
    a little of what the client still sends, within a grace period."""
    body = f"{refusal.status} {HTTPStatus(refusal.status).phrase}: {refusal.reason}\n".encode()
    allow = "Allow: CONNECT\r\n" if refusal.status == 405 else ""
    writer.write(
        f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"{allow}Connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            # Swallow what the client still sends: closing with unread input would reset the
            # connection and could destroy the response before the client reads it.
            swallowed = 0
            while swallowed < _LINGER_BYTES and (chunk := await reader.read(CHUNK)):
                swallowed += len(chunk)
