"""One tunnel of the egress proxy: bytes copied both ways, half-close passed on, idle cut off,
and the client's first bytes checked before any of them reaches the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

CHUNK = 64 * 1024  # bytes read from either side at a time
CLOSE_GRACE = 1.0  # seconds a closing socket may take to flush before it is reset

# Judges the client's first bytes (given the bytes read so far and the client's reader, which
# it may read on from): answers every byte read, to be passed on, or raises TunnelRefused.
FirstBytesCheck = Callable[[bytes, asyncio.StreamReader], Awaitable[bytes]]


class TunnelRefused(Exception):
    """The client's first bytes were refused; nothing of them reached the upstream."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # fixed text: never echoes what the client sent


# Told of every chunk as it is passed on (``up``: from the client), so traffic is counted while
# it flows, not when the tunnel closes.
ChunkCounter = Callable[[bool, int], None]


class TunnelPipe:
    """Both directions of one tunnel: copies bytes, counts them, and notes when data last moved."""

    def __init__(self, opened: float, *, count: ChunkCounter | None = None) -> None:
        self.opened = opened
        self._count = count
        self.last_activity = opened
        self.bytes_up = 0
        self.bytes_down = 0
        self.refusal: str | None = None  # why the first bytes were refused (ending "refused")

    async def run(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        *,
        idle: float,
        early: bytes = b"",
        check: FirstBytesCheck | None = None,
    ) -> str:
        """Copy until both sides closed (``closed``), one reset (``reset``), idle (``idle``) or
        ``check`` refused the client's first bytes (``refused``). ``early``: what the client sent
        before the tunnel opened, its first bytes. The upstream's bytes flow meanwhile (a server
        may speak first)."""
        loop = asyncio.get_running_loop()
        up = self._copy(client[0], upstream[1], up=True, first=early, check=check)
        pending = {
            asyncio.create_task(up),
            asyncio.create_task(self._copy(upstream[0], client[1], up=False)),
        }
        try:
            while pending:
                remaining = self.last_activity + idle - loop.time()
                if remaining <= 0:
                    return "idle"
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    error = task.exception()
                    if isinstance(error, TunnelRefused):
                        self.refusal = error.reason
                        return "refused"
                    if isinstance(error, OSError):
                        return "reset"
                    if error is not None:
                        raise error
            return "closed"
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _copy(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
        first: bytes = b"",
        check: FirstBytesCheck | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        if check is not None:
            if not first:
                first = await reader.read(CHUNK)
            if first:
                self.last_activity = loop.time()
                first = await check(first, reader)
        if first:
            await self._forward(first, writer, up=up)
        while chunk := await reader.read(CHUNK):
            await self._forward(chunk, writer, up=up)
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on; the other direction keeps flowing

    async def _forward(self, chunk: bytes, writer: asyncio.StreamWriter, *, up: bool) -> None:
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        if up:
            self.bytes_up += len(chunk)
        else:
            self.bytes_down += len(chunk)
        if self._count is not None:
            self._count(up, len(chunk))
        writer.write(chunk)
        await writer.drain()
        self.last_activity = loop.time()


async def close_stream(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    """Close one socket: flush and close politely, or reset at once (shutdown, or after a grace)."""
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
