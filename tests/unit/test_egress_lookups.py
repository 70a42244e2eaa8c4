"""One VM's name lookups cannot hold another VM's or the controller's threads: the egress proxy
resolves on threads of its own, at most a few at once per proxy. Over real sockets on 127.0.0.1
only; ``socket.getaddrinfo`` is replaced by a stand-in for a DNS server, nothing else is faked."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hearth.network.egress import EgressProxy, EgressTimeouts

LOOPBACK = "127.0.0.1"
STEP = 5.0
PLACES = 4  # lookups one proxy may have in flight (EgressProxy's default max_lookups)


class StuckDns:
    """``socket.getaddrinfo`` as a DNS server would answer it: names under ``never.test`` get no
    answer until :attr:`release` is set (then a temporary failure), ``fast.test`` is 127.0.0.1
    at once. Counts the lookups stuck at any one time."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.stuck = 0
        self.most_stuck = 0
        self._lock = threading.Lock()
        self._real = socket.getaddrinfo

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".never.test"):
            with self._lock:
                self.stuck += 1
                self.most_stuck = max(self.most_stuck, self.stuck)
            try:
                self.release.wait(30)
            finally:
                with self._lock:
                    self.stuck -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "fast.test":
            return self._real(LOOPBACK, port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckDns]:
    stand_in = StuckDns()
    monkeypatch.setattr(socket, "getaddrinfo", stand_in)
    try:
        yield stand_in
    finally:
        stand_in.release.set()  # no lookup thread outlives the test


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    """A server on 127.0.0.1 that accepts and closes."""

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def status_of_connect(proxy: EgressProxy, target: str) -> int:
    """The status the proxy answers a CONNECT to ``target`` with."""
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    try:
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), STEP)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_names_that_never_resolve_hold_no_other_vms_lookups_nor_the_controllers_threads(
    dns: StuckDns, upstream_port: int
) -> None:
    quick = EgressTimeouts(request=STEP, connect=0.5)
    async with (
        EgressProxy(["*.never.test"], owner="vm-a", timeouts=quick) as flooder,
        EgressProxy(
            [f"fast.test:{upstream_port}"],
            owner="vm-b",
            allow_private=[f"{LOOPBACK}:{upstream_port}"],
            timeouts=EgressTimeouts(request=STEP, connect=2.0),
        ) as other,
    ):
        for wave in range(2):  # the second comes while the first wave's lookups still hang
            flood = [status_of_connect(flooder, f"n{wave}-{i}.never.test:443") for i in range(12)]
            assert await asyncio.gather(*flood) == [504] * 12

        assert await status_of_connect(other, f"fast.test:{upstream_port}") == 200
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 1.0)
        # A lookup keeps its place after its CONNECT gave up: the flooder never had more.
        assert dns.most_stuck == PLACES


class GatedResolver:
    """A resolver that answers 127.0.0.1 for a name once its gate opens; notes each question and
    each lookup cancelled."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: list[str] = []
        self.cancelled: list[str] = []

    def gate(self, host: str) -> asyncio.Event:
        return self.gates.setdefault(host, asyncio.Event())

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        try:
            await self.gate(host).wait()
        except asyncio.CancelledError:
            self.cancelled.append(host)
            raise
        return [LOOPBACK]


async def test_a_connect_waits_for_a_lookup_place_within_its_deadline(upstream_port: int) -> None:
    resolver = GatedResolver()
    resolver.gate("fast.test").set()
    slow = [f"s{i}.slow.test" for i in range(PLACES)]
    async with EgressProxy(
        ["*.slow.test", f"fast.test:{upstream_port}"],
        allow_private=[f"{LOOPBACK}:{upstream_port}"],
        resolver=resolver,
        timeouts=EgressTimeouts(request=STEP, connect=0.3),
    ) as proxy:
        statuses = [status_of_connect(proxy, f"{name}:443") for name in slow]
        assert await asyncio.gather(*statuses) == [504] * PLACES
        # The slow lookups still hold every place: the next CONNECT times out waiting for one,
        # without asking the resolver.
        assert await status_of_connect(proxy, f"fast.test:{upstream_port}") == 504
        assert sorted(resolver.calls) == slow

        resolver.gate(slow[0]).set()
        assert await status_of_connect(proxy, f"fast.test:{upstream_port}") == 200
        assert resolver.calls[PLACES:] == ["fast.test"]


async def test_close_drops_the_lookups_still_running() -> None:
    resolver = GatedResolver()
    proxy = EgressProxy(
        ["slow.test"], resolver=resolver, timeouts=EgressTimeouts(request=STEP, connect=0.2)
    )
    async with proxy:
        assert await status_of_connect(proxy, "slow.test:443") == 504
        assert resolver.cancelled == []  # its CONNECT gave up; the lookup runs on
    assert resolver.cancelled == ["slow.test"]
