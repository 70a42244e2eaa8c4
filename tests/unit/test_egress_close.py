"""A closed egress proxy serves nothing more: not even a connection its listening socket accepted
just before close(). Over real sockets on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hearth.errors import Conflict
from hearth.network.egress import EgressProxy

LOOPBACK = "127.0.0.1"
ALLOWED = "api.allowed.test"


async def first_bytes(sock: socket.socket) -> bytes:
    """What the proxy sent on ``sock`` (b"": it closed or reset it, or said nothing in time)."""
    sock.setblocking(False)
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 1.0)
    except (TimeoutError, OSError):
        return b""


async def test_a_connection_accepted_just_before_close_is_not_served() -> None:
    # Between the listening socket accepting a connection and the proxy's handler starting there
    # are a few loop iterations; close() there must still keep the connection from a tunnel.
    # Each round closes the proxy one iteration later, so one of them lands in that window.
    # The allowlisted name is pinned to a listening socket: the kernel completes the dial.
    with socket.create_server((LOOPBACK, 0)) as upstream:
        pin = f"{LOOPBACK}:{upstream.getsockname()[1]}"
        for iterations in range(8):
            await assert_not_served_when_closed_after(iterations, pin)


async def assert_not_served_when_closed_after(iterations: int, pin: str) -> None:
    """Connect and send a CONNECT, let the loop run ``iterations`` times, close the proxy: the
    client must get no 200, and the proxy must have opened no tunnel."""
    proxy = EgressProxy([f"{ALLOWED}:443"], pins={f"{ALLOWED}:443": pin})
    await proxy.start()
    with socket.create_connection((LOOPBACK, proxy.port)) as client:
        client.sendall(f"CONNECT {ALLOWED}:443 HTTP/1.1\r\n\r\n".encode())
        for _ in range(iterations):
            await asyncio.sleep(0)
        await proxy.close()
        answer = await first_bytes(client)
    assert not answer.startswith(b"HTTP/1.1 200"), f"served after close ({iterations})"
    assert proxy.traffic.tunnels == 0


async def test_a_closed_proxy_cannot_be_started_again() -> None:
    proxy = EgressProxy([f"{ALLOWED}:443"])
    await proxy.start()
    await proxy.close()
    with pytest.raises(Conflict, match="closed"):
        await proxy.start()
