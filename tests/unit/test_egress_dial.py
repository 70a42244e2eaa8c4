"""A name whose first address is silent is reached at its next one: the egress proxy dials the
next address while the last is still silent, and answers 504 only when every address failed or
the deadline passed. Over real sockets on loopback only (127.0.0.x); names come from a fake
resolver. A silent address is a listener whose accept queue is full: the kernel drops SYNs;
the answering one is the echo server of ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from hearth.network.egress import EgressProxy, EgressTimeouts

STEP = 5.0
CONNECT = 2.0  # the proxy's connect deadline in these tests


@pytest.fixture
def silent() -> Iterator[Callable[[str, int], None]]:
    """Make ``address:port`` (on loopback) drop every new SYN, as a dead route does."""
    sockets: list[socket.socket] = []

    def make(address: str, port: int) -> None:
        listener = socket.socket()
        listener.bind((address, port))
        listener.listen(0)
        sockets.append(listener)
        for _ in range(4):  # fill the accept queue: later SYNs get no answer
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((address, port))
            sockets.append(filler)
        time.sleep(0.1)

    yield make
    for each in sockets:
        each.close()


async def connect_status(
    addresses: Sequence[str], port: int, *, allow: Sequence[str] | None = None
) -> tuple[int, float]:
    """The status a proxy answers a CONNECT to a name resolving to ``addresses`` (in that
    order), and how long the answer took."""

    async def resolver(_host: str, _port: int) -> list[str]:
        return list(addresses)

    private = [f"{a}:{port}" for a in (addresses if allow is None else allow)]
    async with EgressProxy(
        [f"api.test:{port}"],
        resolver=resolver,
        allow_private=private,
        timeouts=EgressTimeouts(request=STEP, connect=CONNECT),
    ) as proxy:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(f"CONNECT api.test:{port} HTTP/1.1\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), STEP)
            return int(line.split()[1]), time.monotonic() - started
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_a_name_whose_first_address_is_silent_is_reached_at_the_next(
    echo_port: int, silent: Callable[[str, int], None]
) -> None:
    silent("127.0.0.2", echo_port)
    status, took = await connect_status(["127.0.0.2", "127.0.0.1"], echo_port)
    assert status == 200
    assert took < CONNECT / 2  # the next address started long before the deadline


async def test_a_name_whose_addresses_are_all_silent_gets_504_at_the_deadline(
    echo_port: int, silent: Callable[[str, int], None]
) -> None:
    silent("127.0.0.2", echo_port)
    silent("127.0.0.3", echo_port)
    status, took = await connect_status(["127.0.0.2", "127.0.0.3"], echo_port)
    assert status == 504
    assert took >= CONNECT * 0.9


async def test_a_refusing_first_address_is_followed_at_once_by_the_next(echo_port: int) -> None:
    # Nothing listens on 127.0.0.4 at this port: a refusal, answered by the kernel at once.
    status, took = await connect_status(["127.0.0.4", "127.0.0.1"], echo_port)
    assert status == 200
    assert took < 0.2


async def test_a_name_whose_addresses_all_refuse_gets_502(echo_port: int) -> None:
    status, _ = await connect_status(["127.0.0.4", "127.0.0.5"], echo_port)
    assert status == 502


async def test_every_address_is_checked_before_any_is_dialled(
    echo_port: int, silent: Callable[[str, int], None]
) -> None:
    silent("127.0.0.2", echo_port)
    # 127.0.0.1 answers, but is not excepted: the name is refused, not reached through it.
    status, _ = await connect_status(["127.0.0.2", "127.0.0.1"], echo_port, allow=["127.0.0.2"])
    assert status == 403
