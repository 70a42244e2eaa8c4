"""The scripted user: signs in on the test OAuth server's pages in a Browser VM, over DevTools.

The Browser VM's Chromium serves DevTools on a guest port the controller forwards to a loopback
port. ``CdpPage`` drives one tab the way a user would: it waits for what a user would wait for
(the form on screen), types with ``Input.insertText`` and clicks. The page expressions match the
login and consent pages of the bench's OAuth server, ``oidc_server/server.mjs`` (oidc-provider).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from hearth.bench.errors import BenchError

SUBMIT_BUTTON = 'button[type="submit"]'
# A page counts as shown once it has finished loading: under emulation Chromium renders a page
# while it still arrives, and a heading can be on screen before the form's button exists.
_LOADED = (
    "document.readyState === 'complete' && !!document.querySelector('button[type=\"submit\"]')"
)
LOGIN_FORM_SHOWN = f"{_LOADED} && !!document.querySelector('input[name=\"login\"]')"
CONSENT_SHOWN = f"{_LOADED} && document.body.innerText.includes('Authorize')"
_CALL_TIMEOUT_S = 60.0
# DevTools' answers to an evaluate that a navigation overtook: the page the expression ran in is
# gone (the form was just submitted); the next page answers the next poll.
_NAVIGATED = (
    "Inspected target navigated or closed",
    "Execution context was destroyed",
    "Cannot find default execution context",  # the old page gone, the next one not yet running
    "Not attached to an active page",  # a cross-site navigation committing
)


class PageNavigated(BenchError):
    """The tab navigated away while DevTools ran a command in it."""

    code = "page_navigated"
    http_status = 500


class CdpPage:
    """One tab of the Browser VM's Chromium, driven over DevTools as a user would type."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._next = 0

    @classmethod
    async def find(
        cls, port: int, url_prefix: str, timeout_s: float = 120, *, poll_s: float = 0.5
    ) -> CdpPage:
        """The tab whose URL starts with ``url_prefix`` (the VM's agent opened it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                try:
                    targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                except (httpx.HTTPError, ValueError) as exc:
                    targets, last = [], f"{type(exc).__name__}: {exc}"
                for target in targets:
                    if target.get("type") == "page" and target["url"].startswith(url_prefix):
                        # Chromium names its own 127.0.0.1:9222; go through the forwarded port.
                        ws_url = re.sub(
                            r"^ws://[^/]+",
                            f"ws://127.0.0.1:{port}",
                            target["webSocketDebuggerUrl"],
                        )
                        ws = await connect(ws_url, max_size=None, open_timeout=30)
                        return cls(ws)
                if loop.time() >= deadline:
                    raise BenchError(
                        f"no tab at {url_prefix} in the Browser VM after {timeout_s:.0f} s "
                        f"(DevTools on port {port}: {last})"
                    )
                await asyncio.sleep(poll_s)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one DevTools command and return its result."""
        self._next += 1
        await self._ws.send(
            json.dumps({"id": self._next, "method": method, "params": params or {}})
        )
        while True:
            try:
                message = json.loads(await asyncio.wait_for(self._ws.recv(), _CALL_TIMEOUT_S))
            except TimeoutError:
                raise BenchError(
                    f"DevTools did not answer {method} in {_CALL_TIMEOUT_S:.0f} s"
                ) from None
            if message.get("id") == self._next:
                if "error" in message:
                    error = message["error"]
                    failure = PageNavigated if _navigated(error) else BenchError
                    raise failure(f"DevTools {method} failed: {error}")
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        return result.get("result", {}).get("value")

    async def wait_for(
        self, expression: str, timeout_s: float = 90, *, poll_s: float = 0.5
    ) -> None:
        """Poll until ``expression`` is truthy in the page (a page that navigated: not yet)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await self._evaluate_unless_navigating(expression):
            if asyncio.get_running_loop().time() > deadline:
                seen = await self._evaluate_unless_navigating(
                    "location.href + ' | ' + document.body.innerText"
                )
                raise BenchError(f"never true: {expression}; the page: {seen!r:.500}")
            await asyncio.sleep(poll_s)

    async def _evaluate_unless_navigating(self, expression: str) -> Any:
        try:
            return await self.evaluate(expression)
        except PageNavigated:
            return None

    async def _on_element(self, selector: str, action: str) -> None:
        """Run ``element.<action>()`` on the element; BenchError if the page has none."""
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            f"if (!e) return false; e.{action}(); return true; }})()"
        )
        if found is not True:
            seen = await self.evaluate("location.href + ' | ' + document.body.innerText")
            raise BenchError(f"no element {selector} to {action}; the page: {seen!r:.300}")

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` into it."""
        await self._on_element(selector, "focus")
        await self.call("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """Click the element."""
        await self._on_element(selector, "click")

    async def close(self) -> None:
        """Close the DevTools connection (the tab stays)."""
        await self._ws.close()


def _navigated(error: Any) -> bool:
    message = error.get("message", "") if isinstance(error, dict) else ""
    return any(message.startswith(known) for known in _NAVIGATED)


async def open_sign_in_page(
    devtools_port: int, issuer: str, *, timeout_s: float = 120, poll_s: float = 0.5
) -> CdpPage:
    """The provider's sign-in tab, once its login form is on screen."""
    page = await CdpPage.find(devtools_port, issuer, timeout_s=timeout_s, poll_s=poll_s)
    try:
        await page.wait_for(LOGIN_FORM_SHOWN, timeout_s=timeout_s, poll_s=poll_s)
    except BaseException:
        await page.close()
        raise
    return page


async def submit_consent(page: CdpPage, *, timeout_s: float = 90, poll_s: float = 0.5) -> None:
    """Wait for the consent page to have loaded, then press its button."""
    await page.wait_for(CONSENT_SHOWN, timeout_s=timeout_s, poll_s=poll_s)
    await page.click(SUBMIT_BUTTON)


async def submit_login(page: CdpPage, *, login: str, password: str) -> None:
    """Type the credentials into the sign-in form and submit it."""
    await page.type_into('input[name="login"]', login)
    await page.type_into('input[name="password"]', password)
    await page.click(SUBMIT_BUTTON)
