"""The head of a request to the egress proxy: read within its limits, parsed to the CONNECT
target. Only ``CONNECT host:port HTTP/1.x`` with well-formed header lines passes; the rest is
refused with 400, or 405 for a well-formed request of another method (plain-HTTP proxying)."""

from __future__ import annotations

import asyncio
import re

from hearth.network.allowlist import normalise_host, split_host_port

MAX_HEAD_BYTES = 8 * 1024
# Methods of a well-formed request we refuse with 405 rather than 400.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"})
_VERSION = re.compile(r"HTTP/1\.[01]")
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*")


class BadHead(ValueError):
    """A request head the proxy refuses: the status to answer (400 or 405) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason  # fixed text: never echoes what the client sent


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head (without its blank line) and whatever the client sent after it."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) >= MAX_HEAD_BYTES:
            raise BadHead(400, "request head too large")
        chunk = await reader.read(MAX_HEAD_BYTES)
        if not chunk:
            raise BadHead(400, "incomplete request head")
        buffer += chunk
    if end + 4 > MAX_HEAD_BYTES:
        raise BadHead(400, "request head too large")
    return bytes(buffer[:end]), bytes(buffer[end + 4 :])


def parse_connect(head: bytes) -> tuple[str, int]:
    """The normalised ``host, port`` of a well-formed CONNECT request head."""
    request_line, *headers = head.split(b"\r\n")
    if not all(_HEADER_LINE.fullmatch(line) for line in headers):
        raise BadHead(400, "malformed header")
    try:
        method, target, version = request_line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadHead(400, "malformed request line") from exc
    if not _VERSION.fullmatch(version):
        raise BadHead(400, "unsupported protocol version")
    if method != "CONNECT":
        if method in _HTTP_METHODS:
            raise BadHead(405, "only CONNECT is served")
        raise BadHead(400, "malformed request line")
    try:
        host, port = split_host_port(target, default_port=None)
        return normalise_host(host), port
    except ValueError as exc:
        raise BadHead(400, "malformed CONNECT target") from exc
