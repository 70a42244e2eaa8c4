"""``wait_until_healthy`` gives up with a VmNotReady that names the VM and the kind of failure
of its last probe, never the agent's address (clients read it: an API error, a VM's row); the
probes go to agents stood in for on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from hearth.errors import VmNotReady
from hearth.vm.readiness import Deadline, wait_until_healthy

GIVE_UP_S = 0.3


async def gave_up(url: str, client: httpx.AsyncClient | None = None) -> str:
    """The message of the VmNotReady a wait for ``url`` ends with."""
    with pytest.raises(VmNotReady) as raised:
        await wait_until_healthy(
            url,
            vm_id="vm-7",
            deadline=Deadline.after(GIVE_UP_S),
            exit_status=lambda: None,
            console_tail=lambda: "",
            client=client,
        )
    return raised.value.message


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A loopback port whose listener accepts and never answers."""
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_an_agent_refusing_connections_is_named_and_said_refused(closed_port: int) -> None:
    message = await gave_up(f"http://127.0.0.1:{closed_port}")
    assert message.startswith("VM vm-7 not ready after 300 ms"), message
    assert "connection refused" in message
    assert "127.0.0.1" not in message
    assert str(closed_port) not in message


async def test_an_agent_that_never_answers_is_said_timed_out(silent_port: int) -> None:
    message = await gave_up(f"http://127.0.0.1:{silent_port}")
    assert "vm-7" in message
    assert "timed out" in message
    assert "127.0.0.1" not in message
    assert str(silent_port) not in message


async def test_an_error_whose_text_has_the_agents_address_leaves_it_out() -> None:
    # As httpx raises it where the connect's OSError is passed on as it is (one address):
    # its text is the OS's, with the agent's address inside the VM network.
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            "[Errno 113] Connect call failed ('10.200.0.2', 8080)", request=request
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        message = await gave_up("http://10.200.0.2:8080", client)
    assert "10.200.0.2" not in message
    assert "8080" not in message
    assert "vm-7" in message
    assert "could not connect" in message


@pytest.fixture
async def flooding_port() -> AsyncIterator[int]:
    """A loopback port whose listener answers 200 with a body that never ends."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
        chunk = bytes(65536)
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunk)
                await writer.drain()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_health_answer_whose_body_never_ends_is_judged_by_its_status(
    flooding_port: int,
) -> None:
    # Only the status counts: a guest that sends a body without end is not read until the
    # controller's memory runs out (nor until the deadline).
    async with asyncio.timeout(5):
        took = await wait_until_healthy(
            f"http://127.0.0.1:{flooding_port}",
            vm_id="vm-7",
            deadline=Deadline.after(30),
            exit_status=lambda: None,
            console_tail=lambda: "",
        )
    assert took < 5
