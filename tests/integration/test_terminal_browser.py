"""The terminal page in a real browser (Playwright driving Debian's Chromium, headless) against
the API served on loopback over VMs whose agents are real processes: what a user types reaches
a real shell on a real pseudo-terminal, its output is drawn by xterm.js, and the terminal's size
follows the browser window's.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import REPO
from tests.integration.sdk_fixtures import Live
from tests.integration.terminal_fixtures import *  # noqa: F403
from tests.integration.terminal_fixtures import new_vm, open_link

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
WAIT_MS = 20_000

# The terminal as xterm.js holds it: each line of its buffer, and its size.
_SCREEN = """() => {
  const term = window.hearthTerminal.term;
  const buffer = term.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return {lines: lines, cols: term.cols, rows: term.rows};
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (Debian's, installed by scripts/install.sh)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"needs Chromium at {CHROMIUM} (Debian's chromium; run scripts/install.sh)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            await launched.close()


async def screen(page: Page) -> dict[str, Any]:
    """The terminal's lines and size."""
    found: dict[str, Any] = await page.evaluate(_SCREEN)
    return found


async def until_line(page: Page, line: str) -> dict[str, Any]:
    """Wait until a line of the terminal reads ``line`` (trailing blanks aside)."""
    await page.wait_for_function(
        """(line) => {
          const buffer = window.hearthTerminal.term.buffer.active;
          for (let i = 0; i < buffer.length; i++)
            if (buffer.getLine(i).translateToString(true).trim() === line) return true;
          return false;
        }""",
        arg=line,
        timeout=WAIT_MS,
    )
    return await screen(page)


async def enter(page: Page, command: str) -> None:
    """Type ``command`` and Enter, as a user at the keyboard."""
    await page.keyboard.type(command)
    await page.keyboard.press("Enter")


async def test_a_user_types_in_the_terminal_sees_the_output_and_the_size_follows_the_window(
    live_api: Live, xterm_installed: Path, browser: Browser
) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    page = await browser.new_page(viewport={"width": 1000, "height": 600})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        await page.goto(f"{live_api.url}{link.url}", timeout=WAIT_MS)
        await page.wait_for_function(
            "() => window.hearthTerminal && window.hearthTerminal.status === 'ready'",
            timeout=WAIT_MS,
        )
        assert "token" not in page.url  # dropped from the address bar at once
        await page.locator("#terminal").click()

        await enter(page, "echo $((6 * 7))")
        await until_line(page, "42")
        # Drawn on the page, not only held in xterm.js's buffer.
        assert "42" in await page.locator(".xterm-rows").inner_text()

        before = await screen(page)
        await enter(page, "stty size")
        await until_line(page, f"{before['rows']} {before['cols']}")

        await page.set_viewport_size({"width": 640, "height": 360})
        await page.wait_for_function(
            f"() => window.hearthTerminal.term.cols < {before['cols']}", timeout=WAIT_MS
        )
        after = await screen(page)
        assert after["rows"] < before["rows"]
        await enter(page, "clear; stty size")
        await until_line(page, f"{after['rows']} {after['cols']}")

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "terminal-page.png"))
        status = await page.locator("#status").inner_text()
        assert status == "connected"
    finally:
        await page.close()
    assert problems == []
