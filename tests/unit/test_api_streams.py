"""The API's event streams carry a keepalive comment while nothing else comes, and pass what
comes through as it is, in order, to its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hearth.api.streams import KEEPALIVE, with_keepalive


async def quiet_then(chunks: list[bytes], *, quiet_s: float) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(quiet_s)
        yield chunk


async def test_a_quiet_stream_carries_keepalives_and_every_chunk_in_order() -> None:
    got = [c async for c in with_keepalive(quiet_then([b"a", b"b"], quiet_s=0.25), every_s=0.1)]
    assert [c for c in got if c != KEEPALIVE] == [b"a", b"b"]
    assert got.count(KEEPALIVE) >= 2
    assert got[0] == KEEPALIVE  # the quiet before the first chunk


async def test_a_busy_stream_gets_no_keepalive_and_closing_it_ends_its_source() -> None:
    ended = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x"
                await asyncio.sleep(0)
        finally:
            ended.set()

    stream = with_keepalive(source(), every_s=10)
    got = [await anext(stream) for _ in range(3)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert got == [b"x"] * 3
    assert ended.is_set()
