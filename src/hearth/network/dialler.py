"""Connecting to the first of a name's addresses that answers, the next one tried while the
last is still silent (Happy Eyeballs in the spirit of RFC 8305, kept simple).

A name's first address may be unreachable -- a broken IPv6 route, one dead front end -- and a
connect to it is silent until its deadline. So each address gets ``stagger`` seconds of its own
before the next one starts (at once when an attempt fails outright); attempts then race, the
first connection wins and every other is dropped. Only when every address failed, or the
overall deadline passed, does dialling fail. The caller checks each address before it is given
here: this module dials what it is given, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from hearth.network.addresses import IPAddress

STAGGER = 0.25  # seconds an attempt has before the next address is tried alongside it

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def dial_first(
    targets: Sequence[tuple[IPAddress, int]], deadline: float, *, stagger: float = STAGGER
) -> tuple[IPAddress, Streams]:
    """The first of ``targets`` to accept a connection before ``deadline`` (loop time) and its
    streams. TimeoutError when the deadline passed first; the last OSError when every target
    refused or failed."""
    loop = asyncio.get_running_loop()
    waiting = list(targets)
    attempts: dict[asyncio.Task[Streams], IPAddress] = {}
    failure: OSError | None = None
    next_start = loop.time()
    try:
        while True:
            now = loop.time()
            if now >= deadline:
                raise TimeoutError("no address answered before the deadline")
            if waiting and now >= next_start:
                address, port = waiting.pop(0)
                attempts[asyncio.create_task(_connect(address, port))] = address
                next_start = now + stagger
            if not attempts:
                break
            wake = min(deadline, next_start) if waiting else deadline
            done, _ = await asyncio.wait(
                attempts, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
            )
            for attempt in done:
                address = attempts.pop(attempt)
                error = attempt.exception()
                if error is None:
                    return address, attempt.result()
                if not isinstance(error, OSError):
                    raise error
                failure = error
                next_start = loop.time()  # a refusal is an answer: try the next one at once
    finally:
        await _drop(attempts)
    raise failure if failure is not None else OSError("no address to dial")


async def _connect(address: IPAddress, port: int) -> Streams:
    return await asyncio.open_connection(str(address), port)


async def _drop(attempts: dict[asyncio.Task[Streams], IPAddress]) -> None:
    """Cancel the losing attempts; reset any that connected in the meantime."""
    for attempt in attempts:
        attempt.cancel()
    for outcome in await asyncio.gather(*attempts, return_exceptions=True):
        if isinstance(outcome, tuple):
            with contextlib.suppress(OSError):
                outcome[1].transport.abort()
