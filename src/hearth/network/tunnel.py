"""One tunnel of the egress proxy: bytes copied both ways, half-close passed on, idle cut off."""

from __future__ import annotations

import asyncio

CHUNK = 64 * 1024  # bytes read from either side at a time
CLOSE_GRACE = 1.0  # seconds a closing socket may take to flush before it is reset


class TunnelPipe:
    """Both directions of one tunnel: copies bytes, counts them, and notes when data last moved."""

    def __init__(self, opened: float, *, bytes_up: int = 0) -> None:
        self.opened = opened
        self.last_activity = opened
        self.bytes_up = bytes_up
        self.bytes_down = 0

    async def run(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        *,
        idle: float,
    ) -> str:
        """Copy until both sides closed (``closed``), one reset (``reset``) or idle (``idle``)."""
        loop = asyncio.get_running_loop()
        pending = {
            asyncio.create_task(self._copy(client[0], upstream[1], up=True)),
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
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(CHUNK):
            self.last_activity = loop.time()
            if up:
                self.bytes_up += len(chunk)
            else:
                self.bytes_down += len(chunk)
            writer.write(chunk)
            await writer.drain()
            self.last_activity = loop.time()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on; the other direction keeps flowing


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
