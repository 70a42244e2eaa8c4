"""A tunnel cut by a new policy, or by closing the proxy, ends quietly: the connection is reset,
no task is left, and asyncio reports no error (on Python 3.11 a cancelled stream callback task
was logged as "Exception in callback ... CancelledError"). Loopback only; names: a fake resolver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hearth.network.egress import EgressProxy

STEP = 5.0


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Everything the running loop reports to its exception handler during the test."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(None)


@pytest.fixture
async def holder() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """An upstream on 127.0.0.1 that holds each connection until its peer goes; the event is set
    when it saw the tunnel's end."""
    ended = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read()
        ended.set()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), ended
    finally:
        server.close()
        await server.wait_closed()


async def open_tunnel(
    proxy: EgressProxy, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"CONNECT ok.test:{port} HTTP/1.1\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readline(), STEP)).startswith(b"HTTP/1.1 200")
    await reader.readline()
    return reader, writer


def make_proxy(port: int) -> EgressProxy:
    async def resolver(_host: str, _port: int) -> list[str]:
        return ["127.0.0.1"]

    return EgressProxy([f"ok.test:{port}"], resolver=resolver, allow_private=[f"127.0.0.1:{port}"])


async def assert_cut(reader: asyncio.StreamReader, upstream_ended: asyncio.Event) -> None:
    """The client's side ends (EOF or reset) and so does the upstream's."""
    with contextlib.suppress(OSError):
        assert await asyncio.wait_for(reader.read(), STEP) == b""
    await asyncio.wait_for(upstream_ended.wait(), STEP)


def proxy_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__.startswith("EgressProxy.")  # type: ignore[union-attr]
    ]


async def test_a_tunnel_cut_by_a_new_policy_ends_quietly(
    loop_errors: list[dict[str, Any]], holder: tuple[int, asyncio.Event]
) -> None:
    port, upstream_ended = holder
    async with make_proxy(port) as proxy:
        reader, writer = await open_tunnel(proxy, port)
        assert proxy.set_policy([]) == 1
        await assert_cut(reader, upstream_ended)
        await asyncio.sleep(0.1)  # the stream callback's task ends, and reports, after the cut
        assert proxy_tasks() == []
        writer.close()
    assert loop_errors == []


async def test_closing_the_proxy_with_an_open_tunnel_ends_it_quietly(
    loop_errors: list[dict[str, Any]], holder: tuple[int, asyncio.Event]
) -> None:
    port, upstream_ended = holder
    proxy = make_proxy(port)
    await proxy.start()
    reader, writer = await open_tunnel(proxy, port)
    await proxy.close()
    await assert_cut(reader, upstream_ended)
    await asyncio.sleep(0.1)
    assert proxy_tasks() == []
    writer.close()
    assert loop_errors == []
