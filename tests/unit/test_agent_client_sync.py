"""Writing a workspace out (sync, unmount) may take the guest far longer than an ordinary call:
those calls wait for it, against a loopback agent that takes its time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hearth.agent_client import AgentClient, AgentError

SLOW_S = 1.5


@pytest.fixture
async def slow_agent() -> AsyncIterator[str]:
    """An agent that answers every request after ``SLOW_S``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(SLOW_S)
        body = b'{"synced": true, "unmounted": true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_a_sync_and_an_unmount_outlast_the_clients_own_timeout(slow_agent: str) -> None:
    agent = AgentClient(slow_agent, "token", timeout_s=0.5, vm_id="vm-1")
    with pytest.raises(AgentError):
        await agent.health()  # an ordinary call gives up after the client's timeout

    assert (await agent.sync_workspace())["synced"] is True
    assert (await agent.unmount_workspace())["unmounted"] is True
