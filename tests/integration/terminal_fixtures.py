"""The terminal's tests: the API served by uvicorn on loopback (a WebSocket needs a real server)
over VMs whose agents are real processes on loopback, so every terminal runs a real shell on a
real pseudo-terminal; and a client of the terminal's WebSocket that speaks as the page does.

Layered by lifecycle stage: ``terminal_settings`` (SQLite: a terminal keeps nothing in the
store; the shared cache dir, where xterm.js is installed) → ``xterm_installed`` → ``live_api``
(served; keys for ann and bob). Each test closes the sockets it opened before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hearth import terminal_page
from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.conftest import AgentLauncher
from tests.integration.sdk_fixtures import Live, serving

__all__ = ["live_api", "terminal_settings", "xterm_installed"]

WAIT_S = 15.0
# CSI and OSC sequences, and the two-byte escapes (a shell's prompt and modes).
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


@pytest.fixture
def terminal_settings(tmp_path: Path) -> Settings:
    """A private state dir and its SQLite database; the shared cache dir."""
    return Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_CACHE_DIR": os.environ.get("HEARTH_CACHE_DIR", "/var/cache/hearth"),
        }
    )


@pytest.fixture
def xterm_installed(terminal_settings: Settings) -> Path:
    """xterm.js installed under the cache dir (``npm ci`` the first time, as install.sh does)."""
    return terminal_page.install(terminal_settings.cache_dir)


@pytest.fixture
async def live_api(
    terminal_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Live]:
    """The API served on loopback in this test's loop, over VMs with real agents."""
    async with serving(terminal_settings, AgentBackend(agent_launcher), tmp_path) as live:
        yield live


async def new_vm(live: Live, user: str, vm_type: str = "cli") -> str:
    """A ready VM of ``user``'s (a Browser VM made with the admin key: only it may)."""
    maker = live.api.headers(live.keys[user] if vm_type == "cli" else None)
    body = {"userId": user, "vmType": vm_type}
    created = await live.api.client.post("/api/vms", json=body, headers=maker)
    assert created.status_code == 201, created.text
    vm_id: str = created.json()["id"]
    return vm_id


@dataclass(frozen=True)
class Link:
    """A terminal link as the API answered it, split as the page splits it."""

    terminal_id: str
    url: str
    token: str
    expires_in_s: float

    def socket_url(self, live: Live) -> str:
        """Where the page's WebSocket connects."""
        return f"{live.url.replace('http://', 'ws://')}/terminal/{self.terminal_id}/socket"


async def open_link(live: Live, vm_id: str, key: str | None = None) -> Link:
    """``POST /api/vms/{id}/terminal`` (admin key by default); the link."""
    answer = await live.api.client.post(f"/api/vms/{vm_id}/terminal", headers=live.api.headers(key))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"terminalId", "url", "expiresInS"}
    url = urlsplit(body["url"])
    assert url.path == f"/terminal/{body['terminalId']}"
    assert not url.query  # the token is in the fragment only, which browsers never send
    token = parse_qs(url.fragment)["token"][0]
    return Link(body["terminalId"], body["url"], token, body["expiresInS"])


@dataclass
class TerminalSocket:
    """The page's side of a terminal: what the screen got, and the status messages."""

    connection: ClientConnection
    screen: str = ""
    statuses: list[dict[str, Any]] = field(default_factory=list)

    async def open(self, token: str, cols: int = 80, rows: int = 24) -> None:
        """Present the token and the screen's size, as the page's first message."""
        await self.connection.send(
            json.dumps({"type": "open", "token": token, "cols": cols, "rows": rows})
        )

    async def type(self, text: str) -> None:
        """Keystrokes (a binary frame)."""
        await self.connection.send(text.encode())

    async def resize(self, cols: int, rows: int) -> None:
        """The page's size changed (a text frame)."""
        await self.connection.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def receive_one(self, timeout_s: float = WAIT_S) -> None:
        """One frame into ``screen`` or ``statuses``."""
        async with asyncio.timeout(timeout_s):
            frame = await self.connection.recv()
        if isinstance(frame, bytes):
            self.screen += frame.decode(errors="replace")
        else:
            self.statuses.append(json.loads(frame))

    async def until_status(self, kind: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        """Read until a status of ``kind`` came; that status."""
        async with asyncio.timeout(timeout_s):
            while not any(s["type"] == kind for s in self.statuses):
                await self.receive_one(timeout_s)
        return next(s for s in self.statuses if s["type"] == kind)

    async def until_closed(self, timeout_s: float = WAIT_S) -> int:
        """Read until the controller closes the socket; its close code."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self.receive_one(timeout_s)
        except ConnectionClosed as closed:
            frame = closed.rcvd
        assert frame is not None, "closed without a close frame"
        return frame.code

    def lines(self) -> list[str]:
        """The screen's lines so far, without escape sequences or carriage returns."""
        plain = _ESCAPES.sub("", self.screen).replace("\r", "")
        return plain.split("\n")

    async def until_line(self, line: str, timeout_s: float = WAIT_S) -> list[str]:
        """Read until a whole line reads ``line`` (what was typed is never one); the lines."""
        try:
            async with asyncio.timeout(timeout_s):
                while line not in self.lines():
                    await self.receive_one(timeout_s)
        except TimeoutError:
            pytest.fail(f"no line {line!r} came; the screen showed {self.screen!r}")
        return self.lines()

    async def until_screen(self, needle: str, timeout_s: float = WAIT_S) -> str:
        """Read until ``needle`` is on the screen; the screen."""
        try:
            async with asyncio.timeout(timeout_s):
                while needle not in self.screen:
                    await self.receive_one(timeout_s)
        except TimeoutError:
            pytest.fail(f"{needle!r} never came; the screen showed {self.screen!r}")
        return self.screen


@contextlib.asynccontextmanager
async def ready_terminal(
    live: Live, link: Link, cols: int = 80, rows: int = 24
) -> AsyncIterator[TerminalSocket]:
    """A socket that presented ``link``'s token and whose shell runs; closed on leaving."""
    async with connect(link.socket_url(live)) as connection:
        socket = TerminalSocket(connection)
        await socket.open(link.token, cols, rows)
        await socket.until_status("ready")
        yield socket
