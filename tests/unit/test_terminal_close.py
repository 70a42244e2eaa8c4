"""``TerminalService.close`` over a stand-in exec service: whatever a terminal started (its
shell, the kill of its shell) has ended, or been cancelled and waited for, once ``close``
returns, also for terminals that start or end while it runs.

The relay itself over a real agent is ``tests/integration/test_api_terminal.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hearth.agent_client import AgentEvent
from hearth.control import terminals as terminals_module
from hearth.control.terminals import Resize, TerminalGrant, TerminalService
from tests.unit.test_terminal_links import QuietPage, RunnableVms


class SleepyExecs(RunnableVms):
    """Stands in for ``ExecService`` under shells that run until killed, in a VM that may be
    asleep; a kill waits while it is (``kill_once_awake``), here for as long as the test
    runs, and so does a kill when ``kills_hang``. ``starting``, when set, holds each start."""

    def __init__(self, *, asleep: bool = False, kills_hang: bool = False) -> None:
        super().__init__()
        self.is_asleep = asleep
        self.kills_hang = kills_hang
        self.starting: asyncio.Event | None = None
        self.started: list[str] = []
        self.killed: list[str] = []

    async def start(self, vm_id: str, user_id: str | None, request: object) -> dict[str, object]:
        if self.starting is not None:
            await self.starting.wait()
        exec_id = f"x{len(self.started) + 1}"
        self.started.append(exec_id)
        return {"execId": exec_id, "pid": 7}

    async def follow(self, vm_id: str, exec_id: str, *, after: int) -> AsyncIterator[AgentEvent]:
        await asyncio.Event().wait()  # the shell prints nothing and runs on
        yield AgentEvent(id=after + 1, type="exit", data={"code": 0})

    async def asleep(self, vm_id: str) -> bool:
        return self.is_asleep

    async def kill_once_awake(self, vm_id: str, exec_id: str, signal: str) -> None:
        self.killed.append(exec_id)
        if self.is_asleep or self.kills_hang:
            await asyncio.Event().wait()


class LeavingPage(QuietPage):
    """A page that leaves once ``leave`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.leave = asyncio.Event()

    async def receive(self) -> bytes | Resize | None:
        await self.leave.wait()
        return None


def service(execs: SleepyExecs) -> TerminalService:
    return TerminalService(execs=execs, link_ttl_s=60.0, shell_timeout_s=60.0)  # type: ignore[arg-type]


async def grant(terminals: TerminalService) -> TerminalGrant:
    link = await terminals.open_link("vm-1", "ann")
    return terminals.claim(link.terminal_id, link.token)


def left_running() -> list[asyncio.Task[object]]:
    """The tasks still pending, but the test's own."""
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


@pytest.fixture(autouse=True)
def short_kill_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminals_module, "KILL_TIMEOUT_S", 0.2)


async def test_close_waits_for_the_kill_of_a_shell_whose_vm_sleeps() -> None:
    # The page left while the VM slept: the kill waits for the VM to run again, in the
    # background. A stop cancels it, and has waited for it when it returns.
    execs = SleepyExecs(asleep=True)
    terminals, page = service(execs), LeavingPage()
    running = asyncio.create_task(terminals.run(await grant(terminals), page, Resize(80, 24)))
    while not execs.started:
        await asyncio.sleep(0.01)
    page.leave.set()
    await running
    assert execs.killed == ["x1"]
    await terminals.close()
    assert left_running() == []


async def test_a_terminal_ended_by_close_while_its_vm_sleeps_leaves_no_kill_behind() -> None:
    execs = SleepyExecs(asleep=True)
    terminals = service(execs)
    running = asyncio.create_task(terminals.run(await grant(terminals), QuietPage(), Resize(1, 1)))
    while not execs.started:
        await asyncio.sleep(0.01)
    await terminals.close()
    assert running.done()
    assert left_running() == []


async def test_a_terminal_starting_when_close_begins_is_waited_for_and_its_shell_killed() -> None:
    execs = SleepyExecs(kills_hang=True)
    execs.starting = asyncio.Event()
    terminals = service(execs)
    running = asyncio.create_task(terminals.run(await grant(terminals), QuietPage(), Resize(1, 1)))
    await asyncio.sleep(0.05)  # its shell is starting
    closing = asyncio.create_task(terminals.close())
    await asyncio.sleep(0.05)
    execs.starting.set()
    await closing
    assert running.done()
    assert execs.killed == ["x1"]
    assert left_running() == []


async def test_a_terminal_claimed_before_close_and_run_after_it_starts_no_shell() -> None:
    execs = SleepyExecs()
    terminals, page = service(execs), QuietPage()
    claimed = await grant(terminals)
    await terminals.close()
    await terminals.run(claimed, page, Resize(80, 24))
    assert execs.started == []
    assert page.statuses == [
        {"type": "error", "code": "stopping", "message": "the controller is stopping"}
    ]
    assert left_running() == []
