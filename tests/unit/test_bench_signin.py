"""The scripted user waits through a navigation as a user would, against a DevTools stand-in.

The stand-in is a loopback WebSocket server that answers ``Runtime.evaluate`` the way Chromium's
DevTools does while a submitted form loads its next page (CI saw this answer in
``test_three_users_log_in_at_once…``: the consent page was polled while the login form's POST
navigated the tab).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from hearth.bench.errors import BenchError
from hearth.bench.signin import CdpPage, PageNavigated

NAVIGATED = {"code": -32000, "message": "Inspected target navigated or closed"}
DESTROYED = {"code": -32000, "message": "Execution context was destroyed."}
NO_CONTEXT = {"code": -32000, "message": "Cannot find default execution context"}


@asynccontextmanager
async def devtools(answers: list[Callable[[], dict[str, Any]]]) -> AsyncIterator[CdpPage]:
    """A page whose DevTools gives each command the next of ``answers`` (the last repeats)."""

    async def answer(ws: ServerConnection) -> None:
        async for raw in ws:
            request = json.loads(raw)
            reply = answers.pop(0)() if len(answers) > 1 else answers[0]()
            await ws.send(json.dumps({"id": request["id"], **reply}))

    async with serve(answer, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            yield CdpPage(ws)


def value(v: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"result": {"result": {"type": "boolean", "value": v}}}


def error(e: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: {"error": e}


async def test_a_poll_overtaken_by_navigation_waits_for_the_next_page() -> None:
    answers = [value(False), error(NAVIGATED), error(DESTROYED), error(NO_CONTEXT), value(True)]
    async with devtools(answers) as page:
        await page.wait_for("consent shown", timeout_s=10, poll_s=0.01)
    assert len(answers) == 1  # every answer was asked for: it waited through each


async def test_a_navigation_during_a_click_is_not_hidden() -> None:
    async with devtools([error(NAVIGATED)]) as page:
        with pytest.raises(PageNavigated, match="Inspected target navigated"):
            await page.click("button")


async def test_other_devtools_errors_still_end_the_wait() -> None:
    broken = {"code": -32601, "message": "'Runtime.evaluate' wasn't found"}
    async with devtools([error(broken)]) as page:
        with pytest.raises(BenchError, match="wasn't found") as raised:
            await page.wait_for("consent shown", timeout_s=10, poll_s=0.01)
    assert not isinstance(raised.value, PageNavigated)


async def test_a_page_that_keeps_navigating_still_times_out() -> None:
    async with devtools([error(NAVIGATED)]) as page:
        with pytest.raises(BenchError, match="never true: consent shown; the page: None"):
            await page.wait_for("consent shown", timeout_s=0.05, poll_s=0.01)
