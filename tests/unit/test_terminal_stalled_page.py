"""``TerminalService`` against a page that does not read what it is sent, over a stand-in exec
service: the page cannot hold its shell open. A revoked key's shell is killed before the page is
told, and a page that took nothing for too long (its peer's send raises TimeoutError) ends its
terminal.

The same over a real socket and a real shell is ``tests/integration/test_api_terminal_abuse.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hearth.agent_client import AgentEvent
from hearth.control import terminals as terminals_module
from hearth.control.terminals import Resize
from tests.unit.test_terminal_close import SleepyExecs, grant, left_running, service
from tests.unit.test_terminal_links import QuietPage


class ChattyShell(SleepyExecs):
    """A shell that prints without end."""

    async def follow(self, vm_id: str, exec_id: str, *, after: int) -> AsyncIterator[AgentEvent]:
        while True:
            after += 1
            yield AgentEvent(id=after, type="stdout", data={"data": "x" * 1024})
            await asyncio.sleep(0)


class UnreadPage(QuietPage):
    """A page that reads nothing past ``ready``: a send waits until ``give_up`` is set, then
    raises TimeoutError, as the API's socket does once the page took nothing for too long.
    With ``stall_after``, only sends past that many do."""

    def __init__(self, stall_after: int = 0) -> None:
        super().__init__()
        self.give_up = asyncio.Event()
        self.stall_after = stall_after
        self.sends = 0

    async def send_output(self, data: bytes) -> None:
        await self._stall()
        await super().send_output(data)

    async def send_status(self, message: dict[str, object]) -> None:
        if message["type"] != "ready":
            await self._stall()
        await super().send_status(message)

    async def _stall(self) -> None:
        self.sends += 1
        if self.sends > self.stall_after:
            await self.give_up.wait()
            raise TimeoutError


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminals_module, "KEY_RECHECK_S", 0.01)
    monkeypatch.setattr(terminals_module, "KILL_TIMEOUT_S", 0.2)


async def test_a_revoked_keys_shell_is_killed_before_its_unread_page_is_told() -> None:
    # The page was told first: that send waited while the page did not read, and the shell
    # ran on (and took what the page typed) for as long as it did.
    execs = ChattyShell()
    terminals, page = service(execs), UnreadPage()
    asked: list[str] = []

    async def revoked(key_id: str) -> bool:
        asked.append(key_id)
        return len(asked) > 2  # revoked once the terminal runs

    link = await terminals.open_link("vm-1", "ann", key_id="key-1")
    claimed = terminals.claim(link.terminal_id, link.token)
    running = asyncio.create_task(terminals.run(claimed, page, Resize(80, 24), revoked=revoked))
    async with asyncio.timeout(5):
        while not execs.killed:
            await asyncio.sleep(0.01)
    assert execs.killed == ["x1"]
    assert not running.done()  # still telling the page, which does not read
    page.give_up.set()
    await running
    assert left_running() == []


async def test_a_page_that_takes_nothing_for_too_long_ends_its_terminal() -> None:
    execs = ChattyShell()
    terminals, page = service(execs), UnreadPage(stall_after=3)
    running = asyncio.create_task(terminals.run(await grant(terminals), page, Resize(80, 24)))
    while page.sends <= 3:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert execs.killed == []  # a page slow to read is waited for
    page.give_up.set()
    async with asyncio.timeout(5):
        await running
    assert execs.killed == ["x1"]
    assert len(page.output) == 3
    assert page.sends == 4  # nothing more was tried once it was gone
    assert page.statuses == [{"type": "ready"}]
    assert left_running() == []
