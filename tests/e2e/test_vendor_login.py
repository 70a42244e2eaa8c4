"""A vendor login through the controller, offline: codex in a real Browser VM, egress proxied.

The controller starts the session's egress proxy with the login's allowlist and forwards it into
the Browser VM; Chromium there opens codex's authorize URL through it. ``auth.openai.com:443`` is
pinned (``HEARTH_EGRESS_PINS``) to a stand-in TCP server on 127.0.0.1, so the test sees the TLS
handshake Chromium started for the vendor (its SNI names the host) without anything leaving the
machine; a host off the allowlist is refused by the proxy. Cancelling ends it all.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.images.manifest import ImageDir
from tests.e2e.flow_fixtures import *  # noqa: F403
from tests.e2e.flow_fixtures import E2eOidc, auth_controller_for
from tests.e2e.test_auth_flow import DEVTOOLS_PORT, session_of, wait_status
from tests.vm.api_fixtures import Api
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.browser_fixtures import DevTools

pytestmark = [pytest.mark.slow, pytest.mark.vm]

CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"


class StandIn:
    """A TCP server on 127.0.0.1 that records the first TLS record of every connection (a
    ClientHello with a post-quantum key share is larger than one segment: read it whole)."""

    def __init__(self) -> None:
        self.first_bytes: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.first_bytes.append(await asyncio.wait_for(_first_record(reader), 30))
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _first_record(reader: asyncio.StreamReader) -> bytes:
    """The connection's first TLS record: its 5-byte header, then as many bytes as it says."""
    header = await reader.readexactly(5)
    return header + await reader.readexactly(int.from_bytes(header[3:5], "big"))


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def vendor_controller(
    minimal_image: ImageDir,
    browser_image: ImageDir,
    vm_state_dir: Path,
    e2e_oidc: E2eOidc,
    stand_in: StandIn,
    tmp_path: Path,
) -> AsyncIterator[Api]:
    async for api in auth_controller_for(
        database_url=None,
        state=tmp_path / "state",
        minimal_image=minimal_image,
        browser_image=browser_image,
        template_dir=vm_state_dir / "templates",
        oidc=e2e_oidc,
        # Only the pinned host is allowed: no name is ever resolved through real DNS.
        login_egress_allow=("auth.openai.com",),
        egress_pins=(("auth.openai.com:443", f"127.0.0.1:{stand_in.port}"),),
    ):
        yield api


def egress_count(metrics: str, outcome: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'hearth_egress_requests_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_codex_login_reaches_only_its_vendor_through_the_egress_proxy(
    vendor_controller: Api, stand_in: StandIn
) -> None:
    api = vendor_controller
    async with api.client() as admin:
        started = await admin.post("/api/auth/start", json={"userId": "vera", "provider": "codex"})
    assert started.status_code == 202, started.text
    session_id = started.json()["sessionId"]
    waiting = await wait_status(api, session_id, ("awaiting_user",))
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(waiting["login_url"]).query))
    assert waiting["login_url"].startswith("https://auth.openai.com/oauth/authorize?")
    assert query["client_id"] == CODEX_CLIENT_ID
    assert urllib.parse.urlsplit(query["redirect_uri"]).port == 1455
    browser_vm_id = waiting["browser_vm_id"]

    # Chromium in the VM opened the URL through the proxy: a TLS handshake for auth.openai.com
    # arrived at the stand-in the host is pinned to.
    deadline = asyncio.get_running_loop().time() + 120
    while not any(b"auth.openai.com" in first for first in stand_in.first_bytes):
        assert asyncio.get_running_loop().time() < deadline, stand_in.first_bytes
        await asyncio.sleep(0.5)
    hello = next(first for first in stand_in.first_bytes if b"auth.openai.com" in first)
    assert hello[:1] == b"\x16", "not a TLS handshake record"

    # A host off the allowlist is refused by the proxy, and counted.
    async with api.client() as admin:
        before = egress_count((await admin.get("/metrics")).text, "denied_host")
    devtools = DevTools(api.ctl.vms.live[browser_vm_id].ports[DEVTOOLS_PORT])
    async with httpx.AsyncClient(timeout=60) as client:
        await client.put(f"{devtools.base}/json/new?https://example.com/")
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        async with api.client() as admin:
            denied = egress_count((await admin.get("/metrics")).text, "denied_host")
        if denied > before:
            break
        assert asyncio.get_running_loop().time() < deadline, "the proxy never refused example.com"
        await asyncio.sleep(1)

    async with api.client() as admin:
        cancelled = await admin.post(f"/api/auth/session/{session_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    final = await session_of(api, session_id)
    assert final["status"] == "cancelled"
    # The Browser VM is gone, and so is the session's egress proxy.
    deadline = asyncio.get_running_loop().time() + 60
    while browser_vm_id in api.ctl.vms.live or api.ctl.auth._egress:
        assert asyncio.get_running_loop().time() < deadline, "cleanup did not finish"
        await asyncio.sleep(0.5)
    async with api.client() as admin:
        browser = await admin.get(f"/api/vms/{browser_vm_id}")
    assert browser.status_code == 404 or browser.json()["status"] == "destroyed"
