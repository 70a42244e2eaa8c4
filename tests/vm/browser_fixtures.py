"""Browser VM test support: the real browser image, and small DevTools and VNC (RFB) clients.

The image itself is tests/conftest.py's ``browser_image`` (built once per session through the real
CLI, ``hearth image build --recipe browser``). The clients speak just enough
of each protocol to prove, from the host, that Chromium runs and that the user would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.auth.rfb import authenticate
from hearth.vm.readiness import Backoff, Deadline

__all__ = [
    "DevTools",
    "Framebuffer",
    "RfbClient",
    "RfbError",
    "png_bytes",
    "wait_for_rfb_greeting",
]

# Guest ports served by hearth-browser (see src/hearth/images/guest/hearth-browser).
VNC_PORT = 5900
DEVTOOLS_RELAY_PORT = 9223
RFB_GREETING = re.compile(rb"RFB 003\.00\d\n")


class DevTools:
    """Chromium's DevTools HTTP endpoints, reached through a forwarded loopback port."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def version(self, deadline: Deadline) -> dict[str, Any]:
        """``GET /json/version``: the browser's name, protocol version, WebSocket URL."""
        async with httpx.AsyncClient(timeout=max(0.1, deadline.remaining())) as client:
            response = await client.get(f"{self.base}/json/version")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def wait_until_answering(self, deadline: Deadline) -> dict[str, Any]:
        """Poll ``/json/version`` until it answers; returns its body or fails at the deadline."""
        last = "no probe completed"
        for delay in Backoff(initial_s=0.1, cap_s=1.0).delays():
            try:
                return await self.version(Deadline.after(max(0.5, min(5.0, deadline.remaining()))))
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if deadline.expired:
                break
            await asyncio.sleep(min(delay, deadline.remaining()))
        raise AssertionError(
            f"DevTools at {self.base} not answering after {deadline.seconds} s: {last}"
        )

    async def close_browser(self, deadline: Deadline) -> None:
        """Send ``Browser.close`` over the browser's WebSocket: Chromium exits."""
        ws_url = (await self.version(deadline))["webSocketDebuggerUrl"]
        # Chromium names its own 127.0.0.1:9222; reach it through the forwarded relay instead.
        path = urllib.parse.urlsplit(ws_url).path
        ws_base = self.base.replace("http://", "ws://")
        async with asyncio.timeout(deadline.remaining()):
            async with connect(f"{ws_base}{path}", max_size=None) as ws:
                await ws.send(json.dumps({"id": 1, "method": "Browser.close"}))
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:
                        pass

    async def open_tab(self, url: str, deadline: Deadline) -> dict[str, Any]:
        """``PUT /json/new?<url>``: open ``url`` in a new foreground tab; returns the target."""
        async with httpx.AsyncClient(timeout=max(0.1, deadline.remaining())) as client:
            response = await client.put(f"{self.base}/json/new?{urllib.parse.quote(url, safe='')}")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


async def wait_for_rfb_greeting(port: int, deadline: Deadline) -> bytes:
    """Connect until a VNC server greets with ``RFB 003.00x\\n``; returns the greeting."""
    last = "no attempt completed"
    for delay in Backoff(initial_s=0.1, cap_s=1.0).delays():
        writer: asyncio.StreamWriter | None = None
        try:
            # QEMU accepts on the host side even when nothing listens in the guest, then closes:
            # only the greeting proves the server is there.
            async with asyncio.timeout(max(0.5, min(5.0, deadline.remaining()))):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                greeting = await reader.readexactly(12)
            if RFB_GREETING.fullmatch(greeting):
                return greeting
            last = f"unexpected greeting {greeting!r}"
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if deadline.expired:
            break
        await asyncio.sleep(min(delay, deadline.remaining()))
    raise AssertionError(f"no RFB greeting on port {port} after {deadline.seconds} s: {last}")


@dataclass(frozen=True)
class Framebuffer:
    """One VNC screen capture as 8-bit RGB rows."""

    width: int
    height: int
    rgb: bytes

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        """The colour at ``(x, y)``."""
        offset = (y * self.width + x) * 3
        r, g, b = self.rgb[offset : offset + 3]
        return r, g, b

    def sample(self, step: int = 4) -> list[tuple[int, int, int]]:
        """Every ``step``-th pixel in both directions (enough to judge what is on screen)."""
        return [
            self.pixel(x, y)
            for y in range(0, self.height, step)
            for x in range(0, self.width, step)
        ]

    def distinct_colours(self, step: int = 4) -> int:
        """How many colours the sampled pixels show."""
        return len(set(self.sample(step)))

    def share_of(self, colour: tuple[int, int, int], *, tolerance: int = 8, step: int = 4) -> float:
        """The fraction of sampled pixels within ``tolerance`` of ``colour`` on every channel."""
        pixels = self.sample(step)
        close = sum(
            1
            for p in pixels
            if all(abs(a - b) <= tolerance for a, b in zip(p, colour, strict=True))
        )
        return close / len(pixels)


def png_bytes(frame: Framebuffer) -> bytes:
    """``frame`` as an 8-bit RGB PNG (zlib + struct; no imaging library needed)."""
    stride = frame.width * 3
    raw = b"".join(b"\x00" + frame.rgb[y * stride : (y + 1) * stride] for y in range(frame.height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", frame.width, frame.height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


class RfbError(AssertionError):
    """The VNC server said or did something this client does not accept."""


class RfbClient:
    """A minimal RFB (VNC) viewer: security None or VNC authentication, raw full-screen
    captures."""

    # 32 bits per pixel, depth 24, little-endian, true colour, 8 bits per channel at 16/8/0.
    _PIXEL_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server_version: bytes,
        width: int,
        height: int,
        name: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.server_version = server_version
        self.width = width
        self.height = height
        self.name = name

    @classmethod
    async def connect(
        cls, port: int, deadline: Deadline, *, password: str | None = None
    ) -> RfbClient:
        """Connect to ``127.0.0.1:port``, pass the security phase (VNC authentication with
        ``password`` when given, else security None), then init."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(deadline.remaining()):
                if password is not None:
                    await authenticate(reader, writer, password)
                    return await cls._init(reader, writer, server_version=b"RFB 003.008\n")
                return await cls._handshake(reader, writer)
        except BaseException:
            writer.close()
            raise

    @classmethod
    async def _handshake(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> RfbClient:
        server_version = await reader.readexactly(12)
        if not RFB_GREETING.fullmatch(server_version):
            raise RfbError(f"not an RFB 3.x server: {server_version!r}")
        minor = min(int(server_version[8:11]), 8)
        if minor not in (3, 7, 8):
            minor = 3  # RFC 6143: unknown 3.x minors are to be treated as 3.3
        writer.write(b"RFB 003.%03d\n" % minor)
        if minor == 3:
            (security,) = struct.unpack(">I", await reader.readexactly(4))
            if security == 0:
                raise RfbError(f"server refused the connection: {await cls._reason(reader)}")
            if security != 1:
                raise RfbError(f"server demands security type {security}, not None")
        else:
            (count,) = await reader.readexactly(1)
            if count == 0:
                raise RfbError(f"server refused the connection: {await cls._reason(reader)}")
            offered = await reader.readexactly(count)
            if 1 not in offered:
                raise RfbError(f"server does not offer security None (offers {list(offered)})")
            writer.write(b"\x01")
            if minor == 8:
                (result,) = struct.unpack(">I", await reader.readexactly(4))
                if result != 0:
                    raise RfbError(f"security handshake failed: {await cls._reason(reader)}")
        return await cls._init(reader, writer, server_version=server_version)

    @classmethod
    async def _init(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, server_version: bytes
    ) -> RfbClient:
        writer.write(b"\x01")  # ClientInit: share the desktop with other viewers
        width, height = struct.unpack(">HH", await reader.readexactly(4))
        await reader.readexactly(16)  # the server's pixel format; replaced below by ours
        (name_length,) = struct.unpack(">I", await reader.readexactly(4))
        name = (await reader.readexactly(name_length)).decode(errors="replace")
        writer.write(b"\x00\x00\x00\x00" + cls._PIXEL_FORMAT)  # SetPixelFormat
        writer.write(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only
        await writer.drain()
        return cls(
            reader, writer, server_version=server_version, width=width, height=height, name=name
        )

    @staticmethod
    async def _reason(reader: asyncio.StreamReader) -> str:
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        return (await reader.readexactly(length)).decode(errors="replace")

    async def capture(self, deadline: Deadline) -> Framebuffer:
        """Request the whole screen (non-incremental) and return it once every pixel arrived."""
        pixels = bytearray(self.width * self.height * 4)
        covered = 0
        async with asyncio.timeout(deadline.remaining()):
            while covered < self.width * self.height:
                self._writer.write(struct.pack(">BBHHHH", 3, 0, 0, 0, self.width, self.height))
                await self._writer.drain()
                covered += await self._read_update(pixels)
        rgb = bytearray(self.width * self.height * 3)
        rgb[0::3] = pixels[2::4]
        rgb[1::3] = pixels[1::4]
        rgb[2::3] = pixels[0::4]
        return Framebuffer(width=self.width, height=self.height, rgb=bytes(rgb))

    async def _read_update(self, pixels: bytearray) -> int:
        """Read server messages up to one FramebufferUpdate; returns the pixels it covered."""
        while True:
            (kind,) = await self._reader.readexactly(1)
            if kind == 0:
                break
            if kind == 1:  # SetColourMapEntries (unused with true colour)
                _, _, count = struct.unpack(">BHH", await self._reader.readexactly(5))
                await self._reader.readexactly(count * 6)
            elif kind == 2:  # Bell
                continue
            elif kind == 3:  # ServerCutText
                (length,) = struct.unpack(">xxxI", await self._reader.readexactly(7))
                await self._reader.readexactly(length)
            else:
                raise RfbError(f"unexpected server message type {kind}")
        (rects,) = struct.unpack(">xH", await self._reader.readexactly(3))
        covered = 0
        for _ in range(rects):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self._reader.readexactly(12))
            if encoding != 0:
                raise RfbError(f"server sent encoding {encoding} although only raw was asked")
            data = await self._reader.readexactly(w * h * 4)
            for row in range(h):
                start = ((y + row) * self.width + x) * 4
                pixels[start : start + w * 4] = data[row * w * 4 : (row + 1) * w * 4]
            covered += w * h
        return covered

    async def close(self) -> None:
        """Disconnect."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def save_artifact(name: str, data: bytes) -> Path:
    """Write a test artifact under the repository's ``artifacts/`` (ignored by git)."""
    path = Path(__file__).resolve().parents[2] / "artifacts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
