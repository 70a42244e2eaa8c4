"""The page's input on its way to a terminal's shell, over a stand-in exec service whose shell
does not read its stdin until told to: what the controller holds meanwhile (a byte budget, then
the page's socket is not read), that nothing typed is lost or reordered by the wait, and that
input the shell refused for too long is reported to the page, not dropped silently.

The relay over a real agent and a real socket is ``tests/integration/test_api_terminal.py``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from hearth.agent_client import AgentError
from hearth.control import terminals as terminals_module
from hearth.control.terminals import (
    INPUT_ITEM_COST,
    INPUT_QUEUE_BYTES,
    MAX_INPUT_CHUNK,
    Resize,
)
from tests.unit.test_terminal_close import SleepyExecs, grant, left_running, service
from tests.unit.test_terminal_links import QuietPage

KIB = 1024


class SlowReadingShell(SleepyExecs):
    """A shell that takes nothing on its stdin (the agent answers that its backlog is full)
    until ``reading`` is set; then what each write and size change brought, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.refusals = 0
        self.taken: list[bytes | Resize] = []

    async def stdin(
        self, vm_id: str, user_id: str | None, exec_id: str, body: dict[str, Any]
    ) -> None:
        if not self.reading.is_set():
            self.refusals += 1
            raise AgentError("the stdin backlog is full", agent_code="stdin_backlog_full")
        self.taken.append(base64.b64decode(body["data"]))

    async def resize(
        self, vm_id: str, user_id: str | None, exec_id: str, cols: int, rows: int
    ) -> None:
        self.taken.append(Resize(cols, rows))


class TypingPage(QuietPage):
    """A page that sends ``items`` as fast as it is read, then what is put in ``later``; how
    much was read."""

    def __init__(self, items: Iterator[bytes | Resize]) -> None:
        super().__init__()
        self._items = items
        self.later: asyncio.Queue[bytes | Resize] = asyncio.Queue()
        self.frames = 0
        self.bytes = 0

    async def receive(self) -> bytes | Resize | None:
        item = next(self._items, None)
        if item is None:
            item = await self.later.get()
        self.frames += 1
        self.bytes += len(item) if isinstance(item, bytes) else 0
        return item


def frames(size: int) -> Iterator[bytes]:
    """Distinct frames of ``size`` bytes without end (as a socket gives: no shared object)."""
    for n in itertools.count(1):
        yield bytes([n % 256]) * size


def keys_and_sizes() -> Iterator[bytes | Resize]:
    """One keystroke, a size change, and again, without end: the smallest items there are."""
    for n in itertools.count(1):
        yield b"k"
        yield Resize(80 + n % 2, 24)


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("frame", [64 * KIB, 1024 * KIB], ids=["64KiB-frames", "1MiB-frames"])
async def test_a_shell_that_does_not_read_stops_the_page_being_read_not_the_memory(
    frame: int,
) -> None:
    # Before: 256 frames of any size queued (with uvicorn's 16 MiB frames, 4 GiB).
    execs, page = SlowReadingShell(), TypingPage(frames(frame))
    terminals = service(execs)
    tracemalloc.start()
    try:
        running = asyncio.create_task(terminals.run(await grant(terminals), page, Resize(80, 24)))
        await until(lambda: execs.refusals >= 3)  # the shell has refused for a while
        taken = page.bytes
        await asyncio.sleep(0.2)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert page.bytes == taken  # the page is no longer read
    # The budget, the piece being written and the frame waiting for room.
    assert page.bytes <= INPUT_QUEUE_BYTES + MAX_INPUT_CHUNK + frame
    assert held < 2 * (INPUT_QUEUE_BYTES + MAX_INPUT_CHUNK + frame)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await terminals.close()


async def test_a_flood_of_tiny_frames_and_size_changes_is_bounded_as_well() -> None:
    execs, page = SlowReadingShell(), TypingPage(keys_and_sizes())
    terminals = service(execs)
    running = asyncio.create_task(terminals.run(await grant(terminals), page, Resize(80, 24)))
    await until(lambda: execs.refusals >= 3)
    taken = page.frames
    await asyncio.sleep(0.2)

    assert page.frames == taken
    assert page.frames <= INPUT_QUEUE_BYTES // INPUT_ITEM_COST + 4
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await terminals.close()


async def test_input_held_back_reaches_the_shell_whole_and_in_order_once_it_reads() -> None:
    # More than the budget, in frames bigger and smaller than a write, between size changes.
    typed: list[bytes | Resize] = []
    for n in range(6):
        typed += [bytes([65 + n]) * (300 * KIB + n), Resize(100 + n, 30), b"x", b"y"]
    execs, page = SlowReadingShell(), TypingPage(iter(typed))
    terminals = service(execs)
    running = asyncio.create_task(terminals.run(await grant(terminals), page, Resize(80, 24)))
    await until(lambda: execs.refusals >= 3)
    assert page.frames < len(typed)  # held back, not dropped

    execs.reading.set()
    await until(lambda: size(execs.taken) == size(typed))

    assert merged(execs.taken) == merged(typed)
    assert all(len(w) <= MAX_INPUT_CHUNK for w in execs.taken if isinstance(w, bytes))
    assert page.statuses == [{"type": "ready"}]  # nothing was reported lost
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await terminals.close()


def size(items: list[bytes | Resize]) -> int:
    """How many bytes ``items`` hold."""
    return sum(len(item) for item in items if isinstance(item, bytes))


def merged(items: list[bytes | Resize]) -> list[bytes | Resize]:
    """``items`` with the bytes between two size changes joined."""
    out: list[bytes | Resize] = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        else:
            out.append(item)
    return out


async def test_input_the_shell_refuses_for_too_long_is_reported_to_the_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(terminals_module, "BACKLOG_RETRIES", 1)
    execs, page = SlowReadingShell(), TypingPage(iter([b"lost", b"also"]))
    terminals = service(execs)
    running = asyncio.create_task(terminals.run(await grant(terminals), page, Resize(80, 24)))
    await until(lambda: any(s["type"] == "error" for s in page.statuses))

    error = page.statuses[1]
    assert error["code"] == "stdin_backlog_full"
    assert "8 bytes" in str(error["message"])
    assert not running.done()  # the terminal runs on: the shell may read again
    execs.reading.set()
    page.later.put_nowait(b"later")
    await until(lambda: execs.taken == [b"later"])
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await terminals.close()
    assert left_running() == []
