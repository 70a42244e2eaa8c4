"""The security phase of RFB (VNC, RFC 6143) on both sides of the controller's view proxy.

A Browser VM's x11vnc asks every client for the VM's VNC password (``hearth_agent.vnc``), so a
process on the host that connects to the forwarded loopback port gets nothing. The controller's
token-gated view answers that challenge itself (``authenticate``) and offers the user's noVNC
security type None (``greet_viewer``): the password never reaches a browser. After both, the
proxy only relays bytes (ClientInit onwards).
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Awaitable, Callable

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from hearth.errors import VmError

VERSION_38 = b"RFB 003.008\n"
# A server's ProtocolVersion (RFC 6143 7.1.1): 3.x, the minor as three digits.
_SERVER_VERSION = re.compile(rb"RFB 003\.[0-9]{3}\n")
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2
CHALLENGE_BYTES = 16

ReadExactly = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


class RfbRefused(VmError):
    """The VM's VNC server refused the proxy, or a viewer broke the handshake."""

    code = "vnc_refused"
    http_status = 502


def vnc_auth_response(challenge: bytes, password: str) -> bytes:
    """DES-encrypt the server's 16-byte challenge with the password, as VNC authentication wants:
    the first 8 bytes of the password, NUL-padded, each byte's bits reversed, as a DES key."""
    if len(challenge) != CHALLENGE_BYTES:
        raise ValueError("a VNC challenge has 16 bytes")
    raw = password.encode("latin-1")[:8].ljust(8, b"\0")
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in raw)
    # TripleDES with K1 = K2 = K3 is single DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - RFB says so
    return encryptor.update(challenge) + encryptor.finalize()


async def authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str
) -> None:
    """Pass a VNC server's security phase with ``password`` (RFB 3.3, 3.7 or 3.8); RfbRefused
    names what the server said otherwise. Returns positioned before ClientInit."""
    server_version = await reader.readexactly(12)
    if _SERVER_VERSION.fullmatch(server_version) is None:
        raise RfbRefused(f"not a VNC server: {server_version!r}")
    minor = min(int(server_version[8:11]), 8)
    if minor not in (3, 7, 8):
        minor = 3  # RFC 6143: unknown 3.x minors are treated as 3.3
    writer.write(b"RFB 003.%03d\n" % minor)
    await writer.drain()
    if minor == 3:
        (security,) = struct.unpack(">I", await reader.readexactly(4))
        if security == 0:
            raise RfbRefused(f"the VNC server refused: {await _reason(reader)}")
    else:
        (count,) = await reader.readexactly(1)
        if count == 0:
            raise RfbRefused(f"the VNC server refused: {await _reason(reader)}")
        offered = await reader.readexactly(count)
        if SECURITY_VNC_AUTH not in offered:
            raise RfbRefused(f"the VNC server does not ask for a password (offers {list(offered)})")
        security = SECURITY_VNC_AUTH
        writer.write(bytes([security]))
    if security != SECURITY_VNC_AUTH:
        raise RfbRefused(f"the VNC server does not ask for a password (type {security})")
    challenge = await reader.readexactly(CHALLENGE_BYTES)
    writer.write(vnc_auth_response(challenge, password))
    await writer.drain()
    (result,) = struct.unpack(">I", await reader.readexactly(4))
    if result != 0:
        reason = await _reason(reader) if minor == 8 else "authentication failed"
        raise RfbRefused(f"the VNC server did not accept the VM's password: {reason}")


async def greet_viewer(read_exactly: ReadExactly, write: Write) -> None:
    """Offer a viewer (noVNC) RFB 3.8 with security None; RfbRefused if it will not take it.
    Returns positioned before the viewer's ClientInit."""
    await write(VERSION_38)
    version = await read_exactly(12)
    if version not in (b"RFB 003.003\n", b"RFB 003.007\n", VERSION_38):
        raise RfbRefused(f"the viewer speaks {version!r}")
    if version == b"RFB 003.003\n":
        await write(struct.pack(">I", SECURITY_NONE))
        return
    await write(bytes([1, SECURITY_NONE]))
    (chosen,) = await read_exactly(1)
    if chosen != SECURITY_NONE:
        raise RfbRefused(f"the viewer chose security type {chosen}")
    if version == VERSION_38:
        await write(struct.pack(">I", 0))


async def _reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return (await reader.readexactly(min(length, 4096))).decode(errors="replace")
