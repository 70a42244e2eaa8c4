"""``every``: a loop being stopped lets the step in progress finish (within its grace)."""

from __future__ import annotations

import asyncio

import pytest

from hearth.errors import VmError
from hearth.periodic import every


async def test_a_step_in_progress_finishes_before_the_loop_stops() -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.set()

    loop = asyncio.create_task(every(60, step, what="test"))
    await started.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert finished.is_set(), "the stop cut the step short"


async def test_a_step_longer_than_the_grace_is_cancelled_too() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.create_task(every(60, step, what="test", grace_s=0.05))
    await started.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop, 5)
    assert cancelled.is_set()


async def test_a_failing_step_is_logged_and_the_next_one_runs() -> None:
    rounds: list[int] = []

    async def step() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise VmError("the first round fails")
        if len(rounds) == 2:
            raise KeyError("a bug, or an answer of a shape nobody expected")

    loop = asyncio.create_task(every(0.01, step, what="test"))
    while len(rounds) < 3:
        await asyncio.sleep(0.01)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
