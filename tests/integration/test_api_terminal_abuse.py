"""The terminal's WebSocket against pages that misbehave, over the API served on loopback and
real shells: a page that stops reading what it is sent cannot keep its shell (nor a revoked
key's) running, and the first message, which anyone may send before any token is checked, is
looked at before it is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn.protocols.websockets.auto
from websockets.asyncio.client import connect

from hearth.api.routes import terminal as terminal_route
from tests.integration.sdk_fixtures import Live
from tests.integration.terminal_fixtures import *  # noqa: F403
from tests.integration.terminal_fixtures import (
    Link,
    TerminalSocket,
    new_vm,
    open_link,
    ready_terminal,
)
from tests.integration.test_api_terminal import ANSWER, shell_pids, until_gone

# Output enough to fill the page's receive buffer, the kernel's and then uvicorn's.
FLOOD = "head -c 20000000 /dev/zero | tr '\\0' x; echo\r"


@pytest.fixture
def server_sockets(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.Protocol]:
    """uvicorn's end of each WebSocket made from here on (to see whether its writes wait)."""
    made: list[asyncio.Protocol] = []
    protocol = uvicorn.protocols.websockets.auto.AutoWebSocketsProtocol
    assert isinstance(protocol, type)
    connection_made = protocol.connection_made

    def recorded(self: asyncio.Protocol, transport: asyncio.BaseTransport) -> None:
        connection_made(self, transport)
        made.append(self)

    monkeypatch.setattr(protocol, "connection_made", recorded)
    return made


def writes_wait(protocol: Any) -> bool:
    """Whether the server holds more for this page than its transport's high-water mark: its
    writes wait (``pause_writing``) until the page reads."""
    transport: asyncio.WriteTransport = protocol.transport
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]


@contextlib.asynccontextmanager
async def unread_terminal(live: Live, link: Link) -> AsyncIterator[TerminalSocket]:
    """A page whose shell runs, with a small receive buffer, room for one frame and no
    compression (a flood of one byte would fit in the buffers): once the test stops reading,
    the server soon cannot write to it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = live.url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    async with connect(
        link.socket_url(live), sock=sock, max_queue=1, compression=None, close_timeout=1
    ) as conn:
        page = TerminalSocket(conn)
        await page.open(link.token)
        await page.until_status("ready")
        yield page


async def until_writes_wait(protocol: Any, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not writes_wait(protocol):
            await asyncio.sleep(0.1)


# --- a page that stops reading ------------------------------------------------------------------


async def test_a_revoked_keys_terminal_ends_while_its_page_does_not_read(
    live_api: Live, server_sockets: list[asyncio.Protocol]
) -> None:
    # Telling the page why came first: that send waited while the page did not read, so the
    # shell was never killed and kept taking what the page typed.
    api = live_api.api
    vm_id = await new_vm(live_api, "ann")
    key = await api.user_key("ann")
    key_id = (await api.client.get("/api/keys?userId=ann", headers=api.headers())).json()["keys"]
    link = await open_link(live_api, vm_id, key)

    async with unread_terminal(live_api, link) as page:
        shell, job = await shell_pids(page)
        await page.type(FLOOD)  # and read no more
        await until_writes_wait(server_sockets[-1])
        revoked = await api.client.delete(f"/api/keys/{key_id[-1]['id']}", headers=api.headers())
        assert revoked.status_code == 200, revoked.text
        await until_gone(shell, job, timeout_s=5.0)  # within a second or so, as for any page


async def test_a_page_that_takes_nothing_for_too_long_is_gone_and_its_shell_killed(
    live_api: Live, server_sockets: list[asyncio.Protocol], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal_route, "PAGE_WRITE_TIMEOUT_S", 1.0)
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with unread_terminal(live_api, link) as page:
        shell, job = await shell_pids(page)
        await page.type(FLOOD)
        server = server_sockets[-1]
        await until_writes_wait(server)
        await until_gone(shell, job, timeout_s=10.0)
        async with asyncio.timeout(5):  # the route has ended: the server closes the socket
            while not server.transport.is_closing():  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)


# --- the first message, before any token -------------------------------------------------------


async def opening_refused(live: Live, link: Link, first: str | bytes) -> tuple[int, list[Any]]:
    """Send ``first`` as the socket's first message: the close code and the statuses sent."""
    async with connect(link.socket_url(live), max_size=None) as connection:
        await connection.send(first)
        page = TerminalSocket(connection)
        code = await page.until_closed()
    return code, page.statuses


def opening(token: str, **more: Any) -> str:
    return json.dumps({"type": "open", "token": token, "cols": 80, "rows": 24, **more})


async def test_a_long_first_message_is_refused_unparsed_as_a_wrong_token_is(
    live_api: Live,
) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    long = opening(link.token, pad="x" * terminal_route.MAX_TEXT_CHARS)

    code, statuses = await opening_refused(live_api, link, long)
    assert code == 4401
    assert [(s["code"], s["message"]) for s in statuses] == [
        ("unauthorized", terminal_route._OPENING)
    ]
    async with ready_terminal(live_api, link):  # the link was not spent
        pass


async def test_a_first_message_nested_too_deep_is_refused_with_a_close_frame(
    live_api: Live,
) -> None:
    # json.loads raised RecursionError, which the route did not catch: the socket was dropped
    # without a close frame.
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    depth = (terminal_route.MAX_TEXT_CHARS - 100) // 2
    deep = f'{{"type":"open","token":"x","cols":{"[" * depth}{"]" * depth}}}'
    assert len(deep) <= terminal_route.MAX_TEXT_CHARS

    code, statuses = await opening_refused(live_api, link, deep)
    assert (code, [s["code"] for s in statuses]) == (4401, ["unauthorized"])


@pytest.mark.parametrize("first", [b'{"type": "open"}', "not json", "[]"])
async def test_a_first_message_that_is_no_opening_is_refused_as_a_wrong_token_is(
    live_api: Live, first: str | bytes
) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    code, statuses = await opening_refused(live_api, link, first)
    assert (code, [s["code"] for s in statuses]) == (4401, ["unauthorized"])


async def test_a_long_message_after_the_opening_is_refused_and_the_terminal_runs_on(
    live_api: Live,
) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with ready_terminal(live_api, link) as page:
        resize = {"type": "resize", "cols": 100, "rows": 30}
        await page.connection.send(json.dumps({**resize, "pad": "x" * 5000}))
        error = await page.until_status("error")
        assert error["code"] == "invalid_input"
        assert str(terminal_route.MAX_TEXT_CHARS) in error["message"]
        await page.type("echo $((6*7))\r")
        await page.until_line(ANSWER)
