"""The vendor CLIs' interactive UIs in the web terminal of a real CLI VM, against stand-ins.

The VM is set up as ``test_runs.py`` sets up its own (its fixtures, imported): the cli image with
the test CA added, each provider's API host pinned to a loopback stand-in behind the VM's egress
proxy, and every vendor's login captured and delivered by the auth flow's code. Then, as a person
at the terminal page would, through the terminal's real WebSocket and one login shell: each CLI
is started with no headless flag (``claude``, ``codex``, ``gemini``), and its screen is read with
a terminal emulator (pyte) that answers the queries a terminal answers, as xterm.js does.

Per CLI: its UI comes up ready for a prompt, with no first-run screen in the way (the delivery
and the image's settings see to that); after a resize it draws for the new size; a typed prompt
gets the stand-in's answer on the screen, and the stand-in saw the delivered token; the CLI's own
exit command gives the shell back (``stty size`` reads the new size) and leaves no CLI process
in the VM. The page itself is ``tests/integration/test_terminal_browser.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pyte
import pytest
from websockets.asyncio.client import connect

from hearth.bench.standins.vendors import VENDORS
from hearth_agent.wire import Provider
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.terminal_fixtures import TerminalSocket
from tests.vm.api_fixtures import Api
from tests.vm.test_api import sqlite_only
from tests.vm.test_runs import (
    ANSWER,
    StandIns,
    cli_processes,
    controller,
    documents,
    logged_in_vm,
    standins,
)

__all__ = ["controller", "documents", "standins"]

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]

# Under TCG a CLI takes seconds to tens of seconds to start (claude is a 380 MB native binary).
UI_WAIT_S = 300.0
SHELL_WAIT_S = 60.0
START_SIZE = (100, 30)  # columns, rows
RESIZED = (132, 40)
PROMPT = "Say hello"


@dataclass(frozen=True)
class InteractiveUi:
    """How a person meets one vendor CLI's interactive UI."""

    provider: Provider
    command: str  # typed at the shell
    ready: tuple[str, ...]  # all on the screen once it waits for a prompt (and only then)
    exit_command: str  # its own way out, typed into its prompt


UIS = (
    InteractiveUi(Provider.CLAUDE_CODE, "claude", ("Claude Code v", "shift+tab to"), "/exit"),
    # Codex shows its prompt while it still loads, "loading" where the folder will be.
    InteractiveUi(
        Provider.CODEX, "codex", ("OpenAI Codex", "~/workspace", "? for shortcuts"), "/quit"
    ),
    InteractiveUi(Provider.GEMINI_CLI, "gemini", ("Gemini CLI v", "Type your message"), "/quit"),
)


class _Emulator(pyte.Screen):
    """pyte's screen, keeping what it owes the program (answers to its queries) for the page's
    end to send, as a terminal does."""

    def __init__(self, cols: int, rows: int) -> None:
        super().__init__(cols, rows)
        self.replies: list[str] = []

    def write_process_input(self, data: str) -> None:
        self.replies.append(data)

    # pyte 0.8.2 hands ``private=True`` (a ``CSI ?`` sequence) to handlers that take no such
    # argument, and fails; this one ignores those forms (none of the CLIs here waits on them).
    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        if not private:
            super().select_graphic_rendition(*attrs)

    def report_device_status(self, mode: int, private: bool = False) -> None:
        if not private:
            super().report_device_status(mode)

    def set_margins(self, *margins: int, private: bool = False) -> None:
        if not private:
            super().set_margins(*margins)


@dataclass
class TerminalScreen:
    """The page's terminal as a person sees it: the socket's output through the emulator."""

    socket: TerminalSocket
    emulator: _Emulator = field(default_factory=lambda: _Emulator(*START_SIZE))

    def __post_init__(self) -> None:
        self._stream = pyte.ByteStream(self.emulator)

    @property
    def rows(self) -> list[str]:
        """The screen's rows, trailing blanks removed."""
        return [row.rstrip() for row in self.emulator.display]

    def text(self) -> str:
        """The screen's words joined by single spaces (a sentence that wraps reads as one)."""
        return " ".join(" ".join(self.rows).split())

    def shows(self, *needles: str) -> bool:
        """Whether every one of ``needles`` is on the screen."""
        text = self.text()
        return all(needle in text for needle in needles)

    async def type(self, keys: str) -> None:
        """Keystrokes, as the page sends them."""
        await self.socket.type(keys)

    async def resize(self, cols: int, rows: int) -> None:
        """The page's size changed: the terminal in the VM and this screen both take it."""
        await self.socket.resize(cols, rows)
        self.emulator.resize(rows, cols)

    async def until(self, done: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Read the terminal until ``done()``; fail naming ``what``, with the screen, if it does
        not come in time or the shell ends first."""
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    await self._read_one()
        except TimeoutError:
            pytest.fail(f"{what}: not within {timeout_s:g} s; the screen:\n{self.dump()}")

    async def until_shown(self, *needles: str, timeout_s: float = SHELL_WAIT_S) -> None:
        """Read until every one of ``needles`` is on the screen."""
        await self.until(lambda: self.shows(*needles), f"{needles} on the screen", timeout_s)

    async def read_for(self, seconds: float) -> None:
        """Read whatever the terminal shows for ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    await self._read_one()

    def dump(self) -> str:
        """The screen as it looks, for a failure message."""
        return "\n".join(f"|{row}" for row in self.rows)

    async def _read_one(self) -> None:
        frame = await self.socket.connection.recv()
        if isinstance(frame, str):
            status = json.loads(frame)
            self.socket.statuses.append(status)
            if status["type"] in ("exit", "error"):
                pytest.fail(f"the terminal ended: {status}; the screen:\n{self.dump()}")
            return
        self._stream.feed(frame)
        if self.emulator.replies:
            replies, self.emulator.replies = "".join(self.emulator.replies), []
            await self.type(replies)


async def open_terminal(api: Api, key: str, vm_id: str) -> tuple[str, str]:
    """``POST /api/vms/{id}/terminal``: the socket's URL and the link's token."""
    async with api.client(key) as client:
        opened = await client.post(f"/api/vms/{vm_id}/terminal")
    assert opened.status_code == 201, opened.text
    link = urlsplit(opened.json()["url"])
    token = parse_qs(link.fragment)["token"][0]
    return f"{api.url.replace('http://', 'ws://')}{link.path}/socket", token


@dataclass
class TerminalSession:
    """One user at the terminal of their CLI VM, every vendor's login delivered."""

    api: Api
    key: str
    vm_id: str
    screen: TerminalScreen
    standins: StandIns
    documents: dict[Provider, dict[str, object]]

    async def shell_command(self, command: str, marker: str) -> None:
        """Run ``command`` at the shell prompt and read until it has finished (``marker``
        echoed after it; typed with quotes split, so the echo is the only place it reads whole)."""
        half = len(marker) // 2
        await self.screen.type(f"{command}; echo {marker[:half]}''{marker[half:]}\r")
        await self.screen.until_shown(marker, timeout_s=SHELL_WAIT_S)

    async def until_no_cli_runs(self) -> None:
        """Read the terminal until no vendor CLI's process is left in the VM (``ps``, run in an
        exec of its own)."""
        left = ""
        try:
            async with asyncio.timeout(SHELL_WAIT_S):
                while left := await cli_processes(self.api, self.key, self.vm_id):
                    await self.screen.read_for(1.0)
        except TimeoutError:
            pytest.fail(f"CLI processes left in the VM:\n{left}\nthe screen:\n{self.screen.dump()}")

    async def use(self, ui: InteractiveUi) -> None:
        """Start ``ui``'s CLI at the shell, resize it, prompt it, read the answer, exit it."""
        screen, (cols, rows) = self.screen, START_SIZE
        await screen.resize(cols, rows)
        await self.shell_command("clear", f"shell-before-{ui.command}")
        await screen.type(f"{ui.command}\r")
        await screen.until(
            lambda: screen.shows(*ui.ready), f"{ui.command}'s UI ready for a prompt", UI_WAIT_S
        )

        # Only what the CLI draws after the resize can lie beyond the old screen: wider (a rule
        # across the screen, a right-aligned status) or lower (a prompt kept at the bottom).
        await screen.resize(*RESIZED)
        await screen.until(
            lambda: max(map(len, screen.rows)) > cols or any(screen.rows[rows:]),
            f"{ui.command} redrawn for {RESIZED}",
            SHELL_WAIT_S,
        )

        await screen.type(PROMPT)
        await screen.until_shown(PROMPT)
        await screen.type("\r")
        await screen.until(lambda: screen.shows(ANSWER), f"{ui.command}'s answer", UI_WAIT_S)
        standin = self.standins.by_provider[ui.provider]
        token = VENDORS[ui.provider].access_token(self.documents[ui.provider])
        assert standin.model_requests, f"{ui.command} never reached its stand-in"
        assert token in standin.bearers(), "the delivered token never came"
        assert standin.bearers() <= {token, None}, "a bearer other than the delivered token came"

        await screen.type(ui.exit_command)
        await screen.until_shown(ui.exit_command)
        await screen.type("\r")
        await self.until_no_cli_runs()
        await self.shell_command("stty size", f"shell-after-{ui.command}")
        assert f"{RESIZED[1]} {RESIZED[0]}" in screen.rows, screen.dump()


async def test_each_vendor_clis_interactive_ui_runs_in_the_terminal(
    controller: Api, standins: StandIns, documents: dict[Provider, dict[str, object]]
) -> None:
    vm_id, key = await logged_in_vm(controller, "ann", documents)
    socket_url, token = await open_terminal(controller, key, vm_id)

    async with connect(socket_url, max_size=None) as connection:
        socket = TerminalSocket(connection)
        await socket.open(token, *START_SIZE)
        screen = TerminalScreen(socket)
        await screen.until(lambda: bool(socket.statuses), "the shell started", SHELL_WAIT_S)
        assert socket.statuses[0]["type"] == "ready", socket.statuses
        session = TerminalSession(controller, key, vm_id, screen, standins, documents)
        for ui in UIS:
            await session.use(ui)
