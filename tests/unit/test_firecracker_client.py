"""The client's real unix-socket transport, including sockets deeper than AF_UNIX allows."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.errors import BackendError
from hearth.vm.firecracker.client import FirecrackerClient, reachable_socket_path


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A one-request HTTP server answering like Firecracker's GET /version."""
    head = await reader.readuntil(b"\r\n\r\n")
    request_line = head.split(b"\r\n", 1)[0].decode()
    if request_line.startswith("GET /version "):
        body = json.dumps({"firecracker_version": "1.16.1"}).encode()
        status = "200 OK"
    else:
        body = json.dumps({"fault_message": f"unexpected {request_line}"}).encode()
        status = "400 Bad Request"
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


@pytest.fixture
async def deep_socket(tmp_path: Path) -> AsyncIterator[Path]:
    """A listening unix socket whose path is longer than sun_path allows."""
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    path = directory / "api.sock"
    assert len(str(path)) > 108
    uds, fd = reachable_socket_path(path)
    server = await asyncio.start_unix_server(_answer, path=uds)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()
        if fd is not None:
            os.close(fd)


def test_short_socket_paths_are_used_as_they_are(tmp_path: Path) -> None:
    assert reachable_socket_path(tmp_path / "api.sock") == (str(tmp_path / "api.sock"), None)


async def test_the_client_reaches_a_socket_deeper_than_the_unix_path_limit(
    deep_socket: Path,
) -> None:
    async with FirecrackerClient(deep_socket) as client:
        assert await client.version.get() == {"firecracker_version": "1.16.1"}


async def test_a_missing_socket_is_a_backend_error(tmp_path: Path) -> None:
    async with FirecrackerClient(tmp_path / "absent.sock", timeout_s=1.0) as client:
        with pytest.raises(BackendError, match="GET /version: ConnectError"):
            await client.version.get()


def test_a_client_needs_a_socket_or_a_transport() -> None:
    with pytest.raises(BackendError):
        FirecrackerClient()
