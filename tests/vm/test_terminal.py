"""A terminal in a real CLI VM, over real HTTP and a real WebSocket: only what a VM shows.

The guest's own agent runs the login shell on a pseudo-terminal in the guest (its python3 takes
the terminal, its bash reads the guest's profile), the terminal's size follows the page's, and
closing the page leaves nothing the shell started running in the guest. The link's rules and
the relay are tested in process in ``tests/integration/test_api_terminal.py``, the page in a
browser in ``tests/integration/test_terminal_browser.py``.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.terminal_fixtures import TerminalSocket
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api
from tests.vm.test_api import sqlite_only, user_key

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]
# Under emulation a shell's first prompt can take seconds.
GUEST_WAIT_S = 60.0


async def guest_processes(api: Api, key: str, vm_id: str) -> str:
    """Every process's command line in the guest, one a line (through an exec)."""
    listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done"
    out = []
    async with (
        api.client(key) as client,
        aconnect_sse(
            client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", listing]}
        ) as source,
    ):
        async for sse in source.aiter_sse():
            if sse.event == "stdout":
                out.append(sse.json()["data"])
    return "".join(out)


async def test_a_login_shell_on_a_terminal_in_the_guest_follows_the_page_and_ends_with_it(
    controller: Api,
) -> None:
    key = await user_key(controller, "ann")
    async with controller.client(key) as client:
        created = await client.post("/api/vms", json={})
        assert created.status_code == 201, created.text
        vm_id = created.json()["id"]
        opened = await client.post(f"/api/vms/{vm_id}/terminal")
    assert opened.status_code == 201, opened.text
    link = urlsplit(opened.json()["url"])
    token = parse_qs(link.fragment)["token"][0]
    socket_url = f"{controller.url.replace('http://', 'ws://')}{link.path}/socket"

    async with connect(socket_url) as connection:
        socket = TerminalSocket(connection)
        await socket.open(token, cols=100, rows=30)
        await socket.until_status("ready", GUEST_WAIT_S)
        await socket.type("echo $((6*7)); tty; shopt -q login_shell && echo lo''gin; stty size\r")
        lines = await socket.until_line("30 100", GUEST_WAIT_S)
        assert "42" in lines
        assert any(line.startswith("/dev/pts/") for line in lines)
        assert "login" in lines
        await socket.resize(132, 43)
        await socket.type("stty size; sleep 300 & echo jo''b $!\r")
        await socket.until_line("43 132", GUEST_WAIT_S)
        await socket.until_screen("job ", GUEST_WAIT_S)
        while not re.search(r"job \d+\r\n", socket.screen):
            await socket.receive_one(GUEST_WAIT_S)
        assert "sleep 300" in await guest_processes(controller, key, vm_id)

    # The page is gone: the shell's whole session in the guest, its job too, is killed.
    for _ in range(100):
        listing = await guest_processes(controller, key, vm_id)
        if "sleep 300" not in listing and "bash -l" not in listing:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail(f"the terminal's processes outlived it in the guest:\n{listing}")
