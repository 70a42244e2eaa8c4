"""The view proxy's RFB security phase: what it offers a viewer, and the VNC challenge answer."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from hearth.auth.rfb import RfbRefused, authenticate, greet_viewer, vnc_auth_response
from hearth_agent.vnc import PASSWORD_LENGTH, provision_vnc_password, vnc_password


class Viewer:
    """The viewer's side of a handshake, scripted: what it sends, and what it received."""

    def __init__(self, sends: bytes) -> None:
        self._incoming = bytearray(sends)
        self.received = bytearray()

    async def read_exactly(self, size: int) -> bytes:
        if len(self._incoming) < size:
            raise asyncio.IncompleteReadError(bytes(self._incoming), size)
        chunk = bytes(self._incoming[:size])
        del self._incoming[:size]
        return chunk

    async def write(self, data: bytes) -> None:
        self.received += data


async def test_a_38_viewer_is_offered_security_none_and_told_it_passed() -> None:
    viewer = Viewer(b"RFB 003.008\n" + b"\x01")
    await greet_viewer(viewer.read_exactly, viewer.write)
    assert bytes(viewer.received) == b"RFB 003.008\n" + b"\x01\x01" + struct.pack(">I", 0)


async def test_a_33_viewer_is_told_security_none() -> None:
    viewer = Viewer(b"RFB 003.003\n")
    await greet_viewer(viewer.read_exactly, viewer.write)
    assert bytes(viewer.received) == b"RFB 003.008\n" + struct.pack(">I", 1)


@pytest.mark.parametrize(
    ("sends", "reason"), [(b"HTTP/1.1 200\n", "speaks"), (b"RFB 003.008\n\x02", "chose")]
)
async def test_a_viewer_that_breaks_the_handshake_is_refused(sends: bytes, reason: str) -> None:
    viewer = Viewer(sends)
    with pytest.raises(RfbRefused, match=reason):
        await greet_viewer(viewer.read_exactly, viewer.write)


@pytest.mark.parametrize("version", [b"RFB 003.abc\n", b"RFB 003.-1 \n", b"SSH-2.0-x\r\n\0\0"])
async def test_a_server_whose_version_is_not_rfb_3_is_refused(version: bytes) -> None:
    # int() of a minor that is not three digits raised ValueError out of the view's handler.
    async def vm_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(version)
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(vm_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with pytest.raises(RfbRefused, match="not a VNC server"):
                await asyncio.wait_for(authenticate(reader, writer, "password"), timeout=5)
        finally:
            writer.close()


def test_the_challenge_answer_depends_on_the_challenge_and_on_the_password() -> None:
    challenge = bytes(range(16))
    answer = vnc_auth_response(challenge, "pass1234")
    assert len(answer) == 16
    assert answer != vnc_auth_response(challenge, "pass1235")
    assert answer != vnc_auth_response(bytes(16), "pass1234")
    # VNC authentication reads 8 bytes of password: a longer one is cut there.
    assert answer == vnc_auth_response(challenge, "pass1234-and-more")


def test_each_token_has_its_own_vnc_password() -> None:
    first, second = vnc_password("a" * 43), vnc_password("b" * 43)
    assert len(first) == PASSWORD_LENGTH
    assert first != second
    assert vnc_password("a" * 43) == first


def test_the_password_file_is_written_privately_in_a_browser_vm_only(tmp_path: Path) -> None:
    assert provision_vnc_password("t" * 43, state_dir=tmp_path / "absent") is False
    assert provision_vnc_password("t" * 43, state_dir=tmp_path) is True
    path = tmp_path / "vnc.passwd"
    assert path.read_text() == vnc_password("t" * 43) + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
