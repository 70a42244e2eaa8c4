"""The login's view in a real browser (Playwright driving Debian's Chromium, headless) with the
real noVNC (Debian's ``novnc``), under the headers the controller serves them with: noVNC's page
loads, opens its WebSocket through the view and draws the Browser VM's screen, and the page's
Content-Security-Policy blocks nothing of it.

The Browser VM's screen is ``GreyScreen``, a VNC server on loopback that asks for the VM's own
password as the VM's x11vnc does and shows one grey frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser

from hearth.api.routes.view import NOVNC_DIR
from hearth.auth.flow import VNC_PORT
from hearth.auth.rfb import VERSION_38, vnc_auth_response
from hearth.auth.states import AuthStatus
from hearth_agent.vnc import vnc_password
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api
from tests.integration.test_api_view import viewed
from tests.integration.test_terminal_browser import WAIT_MS, browser  # noqa: F401 (a fixture)

WIDTH, HEIGHT = 64, 48
GREY = 0x80
# Every violation of the page's policy, kept where the test reads it (injected before the page's
# own scripts; the policy does not apply to it).
_RECORD_VIOLATIONS = """
window.violations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""
_CENTRE_PIXEL = f"""() => {{
  const canvas = document.querySelector('#noVNC_container canvas');
  if (!canvas || canvas.width !== {WIDTH}) return null;
  return Array.from(canvas.getContext('2d').getImageData({WIDTH // 2}, {HEIGHT // 2}, 1, 1).data);
}}"""


def _server_init(name: bytes) -> bytes:
    """RFB ServerInit: the screen's size, 32-bit true colour, and its name."""
    pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", WIDTH, HEIGHT) + pixel_format + struct.pack(">I", len(name)) + name


def _grey_frame() -> bytes:
    """One FramebufferUpdate: a raw rectangle over the whole screen, every pixel grey."""
    header = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, WIDTH, HEIGHT, 0)
    return header + bytes([GREY, GREY, GREY, 0]) * (WIDTH * HEIGHT)


@contextlib.asynccontextmanager
async def grey_screen(password: str) -> AsyncIterator[int]:
    """A VNC server on loopback (RFB 3.8, VNC authentication with ``password``) whose screen
    is one grey frame; its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        challenge = secrets.token_bytes(16)
        # RFB 3.8; one security type, VNC authentication; its challenge: each with the size of
        # the viewer's answer.
        steps = ((VERSION_38, 12), (bytes([1, 2]), 1), (challenge, 16))
        try:
            for sent, size in steps:
                writer.write(sent)
                answer = await reader.readexactly(size)
            if answer != vnc_auth_response(challenge, password):
                return
            writer.write(struct.pack(">I", 0))
            await reader.readexactly(1)  # ClientInit
            writer.write(_server_init(b"hearth-test"))
            await reader.read(4096)  # the viewer's pixel format, encodings, update request
            writer.write(_grey_frame())
            await writer.drain()
            while await reader.read(4096):
                pass  # the viewer's further requests: the screen does not change
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# The store plays no part: one is enough for a browser's run.
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_novnc_draws_the_login_screen_through_the_view_and_its_policy_blocks_nothing(
    api: Api,
    browser: Browser,  # noqa: F811 (the fixture, imported above)
) -> None:
    if not (NOVNC_DIR / "vnc.html").is_file():
        pytest.skip(f"needs noVNC under {NOVNC_DIR} (Debian's novnc; run scripts/install.sh)")
    async with viewed(api, AuthStatus.AWAITING_USER) as view:
        vm = api.ctl.vms.live_vm(view.session.browser_vm_id or "")
        assert vm.token is not None
        async with grey_screen(vnc_password(vm.token)) as port:
            vm.ports[VNC_PORT] = port
            page = await browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.add_init_script(_RECORD_VIOLATIONS)
            try:
                link = f"{view.base}/view/{view.session.id}?token={view.token}"
                answer = await page.goto(link, timeout=WAIT_MS)
                assert answer is not None
                assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]

                await page.wait_for_function(
                    "() => document.documentElement.classList.contains('noVNC_connected')",
                    timeout=WAIT_MS,
                )
                await page.wait_for_function(
                    f"() => ({_CENTRE_PIXEL})()?.[0] === {GREY}", timeout=WAIT_MS
                )

                assert await page.evaluate(_CENTRE_PIXEL) == [GREY, GREY, GREY, 255]
                assert await page.evaluate("window.violations") == []
                # Debian's noVNC lacks the package.json and English locale its page asks for
                # (and does without): 404s of noVNC's own, not refusals of the policy's.
                assert [e for e in errors if "404" not in e] == []
            finally:
                await page.close()
