"""``hearth.teardown.Teardown``: every step runs once, newest first, errors collected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from hearth.errors import TeardownError
from hearth.teardown import Teardown


async def test_steps_run_newest_first_and_a_failing_one_does_not_stop_the_others() -> None:
    ran: list[str] = []

    async def close_store() -> None:
        ran.append("store")

    def broken() -> None:
        ran.append("broken")
        raise OSError("device busy")

    async def run() -> None:
        async with Teardown() as teardown:
            teardown.push("close the store", close_store)
            teardown.push("remove a file", broken)
            teardown.push("stop the monitor", lambda: ran.append("monitor"))

    with pytest.raises(TeardownError) as caught:
        await run()
    assert ran == ["monitor", "broken", "store"]
    assert "remove a file: OSError: device busy" in caught.value.message


async def test_the_bodys_error_wins_over_cleanup_errors_and_every_step_still_runs() -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("gone")

    async def run() -> None:
        async with Teardown() as teardown:
            teardown.push("close the store", lambda: ran.append("store"))
            teardown.push("remove a file", broken)
            raise KeyError("the start failed")

    with pytest.raises(KeyError):
        await run()
    assert ran == ["store"]


async def test_an_entered_context_is_left_in_its_place_in_the_order() -> None:
    ran: list[str] = []

    @asynccontextmanager
    async def service(name: str) -> AsyncIterator[str]:
        ran.append(f"enter {name}")
        yield name
        ran.append(f"leave {name}")

    async with Teardown() as teardown:
        teardown.push("first", lambda: ran.append("first"))
        assert await teardown.enter(service("pool")) == "pool"
        teardown.push("last", lambda: ran.append("last"))
    assert ran == ["enter pool", "last", "leave pool", "first"]


async def test_the_owner_names_its_own_error_class() -> None:
    class OwnError(TeardownError):
        pass

    def broken() -> None:
        raise ValueError("x")

    with pytest.raises(OwnError):
        async with Teardown(error=OwnError) as teardown:
            teardown.push("step", broken)
