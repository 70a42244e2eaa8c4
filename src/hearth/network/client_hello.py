"""The server name a TLS ClientHello asks for, read from the first bytes a client sends.

The egress proxy checks it against the CONNECT target: a front end that serves many sites from
one address (a CDN's, a cloud's) picks the site by this name, so a tunnel to an allowlisted name
that then asks for another would reach whatever the other is (domain fronting). Only the first
flight is read: the ClientHello's handshake message, carried in one or more handshake records
(RFC 8446 section 5.1; a post-quantum key share makes it larger than one TCP segment), and its
``server_name`` extension (RFC 6066 section 3).

A ClientHello that carries its real server name encrypted is refused whatever its outer name:
with Encrypted Client Hello (ECH, the ``encrypted_client_hello`` extension) or its draft
predecessor ESNI, the front end routes by an inner name the proxy cannot read, so an outer name
that is the CONNECT host would prove nothing. Chromium sends a GREASE ECH extension by default;
the Browser VM starts it with ECH turned off (``images/guest/hearth-browser``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hearth.network.tunnel import FirstBytesCheck, TunnelRefused

_HANDSHAKE_RECORD = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME_EXTENSION = 0x0000
# Extensions that carry the real server name encrypted, where the proxy cannot read it.
_HIDDEN_NAME_EXTENSIONS = frozenset(
    {
        0xFE0D,  # encrypted_client_hello (ECH), also sent as GREASE by clients without a config
        0xFFCE,  # encrypted_server_name (ESNI, the drafts before ECH)
    }
)
_HOST_NAME = 0x00
_RECORD_HEADER = 5
_MAX_RECORD = 2**14 + 2048  # the largest TLSCiphertext fragment (RFC 8446 section 5.2)
MAX_CLIENT_HELLO = 64 * 1024  # a larger first message is refused, never buffered


class NotAClientHello(ValueError):
    """The first flight starts like TLS but is not a well-formed ClientHello."""


@dataclass(frozen=True)
class ClientHello:
    """What the proxy reads of a ClientHello: the name it asks for, and whether it hides one."""

    server_name: str | None  # lower-cased; None: it names none
    encrypted_name: bool  # an ECH or ESNI extension: the real name is inside, unreadable


def server_name_check(host: str, *, timeout: float) -> FirstBytesCheck:
    """The check of a tunnel to the name ``host`` (normalised): a TLS ClientHello must ask for
    ``host`` and nothing else, carry no encrypted name (ECH, ESNI), and arrive within
    ``timeout`` of its first byte. Bytes that do not open a TLS handshake pass (another
    protocol: no name to check)."""

    async def check(first: bytes, reader: asyncio.StreamReader) -> bytes:
        if not starts_tls(first):
            return first
        try:
            async with asyncio.timeout(timeout):
                flight, hello = await read_client_hello(reader, first)
        except TimeoutError as exc:
            raise TunnelRefused("the TLS ClientHello did not arrive in time") from exc
        except NotAClientHello as exc:
            raise TunnelRefused("malformed TLS ClientHello") from exc
        if hello.encrypted_name:
            raise TunnelRefused("the TLS ClientHello encrypts its server name (ECH)")
        name = hello.server_name
        if name is None or name.removesuffix(".") != host:
            raise TunnelRefused("the TLS server name is not the CONNECT host")
        return flight

    return check


def starts_tls(first: bytes) -> bool:
    """Whether a client's first bytes open a TLS handshake record (so must be a ClientHello)."""
    return first[:1] == bytes([_HANDSHAKE_RECORD])


async def read_client_hello(
    reader: asyncio.StreamReader, first: bytes
) -> tuple[bytes, ClientHello]:
    """Read on from ``first`` (a handshake record's start) until the whole ClientHello arrived:
    every byte read, to be passed on unchanged, and what it asks for.
    NotAClientHello if it is malformed, too large, or the client stops before its end."""
    buffer = bytearray(first)
    handshake = bytearray()
    offset = 0
    while len(handshake) < 4 or len(handshake) < 4 + int.from_bytes(handshake[1:4], "big"):
        if len(handshake) >= 4 and int.from_bytes(handshake[1:4], "big") > MAX_CLIENT_HELLO:
            raise NotAClientHello("the ClientHello is too large")
        while len(buffer) < offset + _RECORD_HEADER:
            await _read_more(reader, buffer)
        header = buffer[offset : offset + _RECORD_HEADER]
        length = int.from_bytes(header[3:5], "big")
        if header[0] != _HANDSHAKE_RECORD or header[1] != 3 or not 0 < length <= _MAX_RECORD:
            raise NotAClientHello("not a TLS handshake record")
        while len(buffer) < offset + _RECORD_HEADER + length:
            await _read_more(reader, buffer)
        handshake += buffer[offset + _RECORD_HEADER : offset + _RECORD_HEADER + length]
        offset += _RECORD_HEADER + length
    if handshake[0] != _CLIENT_HELLO:
        raise NotAClientHello("the first handshake message is not a ClientHello")
    body = bytes(handshake[4 : 4 + int.from_bytes(handshake[1:4], "big")])
    return bytes(buffer), parse_client_hello(body)


async def _read_more(reader: asyncio.StreamReader, buffer: bytearray) -> None:
    if len(buffer) > MAX_CLIENT_HELLO + 4 * _RECORD_HEADER:
        raise NotAClientHello("the ClientHello is too large")
    chunk = await reader.read(MAX_CLIENT_HELLO)
    if not chunk:
        raise NotAClientHello("the client stopped inside its ClientHello")
    buffer += chunk


def server_name(body: bytes) -> str | None:
    """The host name of a ClientHello's body (after its 4-byte handshake header), lower-cased;
    None if it names none. NotAClientHello if malformed, or if it names more than one."""
    return parse_client_hello(body).server_name


def parse_client_hello(body: bytes) -> ClientHello:
    """A ClientHello's body (after its 4-byte handshake header) read: NotAClientHello if it is
    malformed, or if it names more than one host."""
    cursor = _Cursor(body)
    cursor.take(2 + 32)  # legacy_version, random
    cursor.take(cursor.number(1))  # legacy_session_id
    cursor.take(cursor.number(2))  # cipher_suites
    cursor.take(cursor.number(1))  # legacy_compression_methods
    if cursor.done():
        return ClientHello(None, encrypted_name=False)  # no extensions at all (TLS 1.2 allows it)
    extensions = _Cursor(cursor.take(cursor.number(2)))
    if not cursor.done():
        raise NotAClientHello("bytes after the extensions")
    names: list[str] = []
    seen: set[int] = set()
    while not extensions.done():
        kind, data = extensions.number(2), extensions.take(extensions.number(2))
        if kind in seen:
            raise NotAClientHello("an extension appears twice")
        seen.add(kind)
        if kind == _SERVER_NAME_EXTENSION:
            names = _host_names(data)
    if len(names) > 1:
        raise NotAClientHello("more than one host name")
    encrypted = not seen.isdisjoint(_HIDDEN_NAME_EXTENSIONS)
    return ClientHello(names[0] if names else None, encrypted_name=encrypted)


def _host_names(data: bytes) -> list[str]:
    outer = _Cursor(data)
    entries = _Cursor(outer.take(outer.number(2)))
    if not outer.done():
        raise NotAClientHello("bytes after the server name list")
    names = []
    while not entries.done():
        kind, name = entries.number(1), entries.take(entries.number(2))
        if kind == _HOST_NAME:
            try:
                names.append(name.decode("ascii").lower())
            except UnicodeDecodeError as exc:
                raise NotAClientHello("a host name that is not ASCII") from exc
    return names


class _Cursor:
    """Reads length-prefixed fields off the front of a byte string; NotAClientHello past its end."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise NotAClientHello("a field runs past its end")
        self._at += n
        return self._data[self._at - n : self._at]

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def done(self) -> bool:
        return self._at == len(self._data)
