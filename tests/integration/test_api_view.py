"""The login view's WebSocket, served by uvicorn on loopback, relaying to a VNC server on loopback.

The controller is the real one over the fake backend; the Browser VM's screen is ``FakeVnc``, a
VNC server that asks for the VM's own password as the VM's x11vnc does, then echoes what it is
sent. A login's row is written straight into the store at the stage a case needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from hearth.auth.flow import VNC_PORT
from hearth.auth.rfb import VERSION_38, vnc_auth_response
from hearth.auth.states import AuthStatus
from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.links import link_token_hash
from hearth.store.records import AuthSessionRecord
from hearth_agent.vnc import vnc_password
from hearth_agent.wire import Provider
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api, served

WAIT_S = 10.0
# What the view offers a viewer after RFB's version: security None, and that it passed.
_SECURITY_NONE_OFFERED = bytes([1, 1])
_PASSED = struct.pack(">I", 0)
_BINARY = [Subprotocol("binary")]


class FakeVnc:
    """A VNC server on loopback: RFB 3.8, VNC authentication with ``password``, then an echo.
    It greets a connection only once ``gate`` is set (at once by default); ``open`` counts the
    connections it holds; ``drop_all`` resets them as a dying VM would."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.gate = asyncio.Event()
        self.gate.set()
        self.open = 0
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeVnc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.gate.set()
        self.drop_all()
        self._server.close()
        await self._server.wait_closed()

    def drop_all(self) -> None:
        """Reset every connection (RST, not FIN)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self._writers.add(writer)
        try:
            await self.gate.wait()
            writer.write(VERSION_38)
            await reader.readexactly(12)
            writer.write(bytes([1, 2]))  # one security type: VNC authentication
            await reader.readexactly(1)
            challenge = secrets.token_bytes(16)
            writer.write(challenge)
            answer = await reader.readexactly(16)
            if answer != vnc_auth_response(challenge, self.password):
                reason = b"wrong password"
                writer.write(struct.pack(">II", 1, len(reason)) + reason)
                await writer.drain()
                return
            writer.write(_PASSED)
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


@dataclass
class View:
    """One login's view over a served API: its socket's address and the login's row."""

    api: Api
    base: str
    session: AuthSessionRecord
    token: str
    vnc: FakeVnc

    @property
    def url(self) -> str:
        """The socket's URL on the served API (with the token)."""
        host = self.base.removeprefix("http://")
        return f"ws://{host}/view/{self.session.id}/websockify?token={self.token}"

    async def show_login(self) -> None:
        """Move the login on to ``awaiting_user``, as the flow does once the CLI VM is proven."""
        await self.api.ctl.store.auth_sessions.transition(
            self.session.id, self.session.status, AuthStatus.AWAITING_USER
        )


@contextlib.asynccontextmanager
async def viewed(
    api: Api, status: AuthStatus, api_key_id: str | None = None
) -> AsyncIterator[View]:
    """A Browser VM whose VNC port reaches a ``FakeVnc``, a login at ``status`` naming it with a
    view token (started by API key ``api_key_id``), and the API served on loopback."""
    created = await api.client.post(
        "/api/vms", json={"userId": "ann", "vmType": "browser"}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    vm = api.ctl.vms.live_vm(created.json()["id"])
    assert vm.token is not None
    token = secrets.token_urlsafe(24)
    session = await api.ctl.store.auth_sessions.insert(
        AuthSessionRecord(
            id=f"auth-view-{secrets.token_hex(4)}",
            user_id="ann",
            provider=Provider.CODEX,
            status=status,
            browser_vm_id=vm.id,
            view_token_hash=link_token_hash(token),
            api_key_id=api_key_id,
        )
    )
    async with FakeVnc(vnc_password(vm.token)) as vnc, served(api.app) as base:
        vm.ports[VNC_PORT] = vnc.port
        try:
            yield View(api, base, session, token, vnc)
        finally:
            # A socket still waiting for the login to be shown ends with it, so the server
            # stops whatever the case left.
            left = await api.ctl.store.auth_sessions.get(session.id)
            if not left.is_terminal:
                await api.ctl.store.auth_sessions.transition(
                    session.id, left.status, AuthStatus.CANCELLED
                )


def reads_of_logins(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the logins' rows read from the store from now on, in order (the view's wait
    for a login to be shown reads its row every 0.2 s)."""
    reads: list[str] = []
    real_get = api.ctl.store.auth_sessions.get

    async def counted_get(session_id: str) -> AuthSessionRecord:
        reads.append(session_id)
        return await real_get(session_id)

    monkeypatch.setattr(api.ctl.store.auth_sessions, "get", counted_get)
    return reads


async def knock(view: View) -> asyncio.StreamWriter:
    """A client that asks for the view's socket over raw TCP and reads nothing: closing the
    writer is the client going away before the socket was accepted."""
    url = urlsplit(view.url)
    host, port = url.hostname, url.port
    _, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    writer.write(
        f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: binary\r\n\r\n".encode()
    )
    await writer.drain()
    return writer


@contextlib.asynccontextmanager
async def knocked(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[View, asyncio.StreamWriter, list[str]]]:
    """A login not yet shown and its view (``viewed``), a client that ``knock``-ed, once its
    socket is seen waiting (the row read for the token's check, then by the wait), and the
    reads of the logins' rows (``reads_of_logins``)."""
    reads = reads_of_logins(api, monkeypatch)
    async with viewed(api, AuthStatus.BROWSER_VM_STARTING) as view:
        client = await knock(view)

        async def waiting() -> bool:
            return len(reads) >= 2

        await until(waiting)
        yield view, client, reads


async def relayed(url: str) -> ClientConnection:
    """A viewer through the view's RFB handshake (as noVNC), its relay proven by an echo."""
    async with asyncio.timeout(WAIT_S):
        socket = await connect(url, subprotocols=_BINARY)
        assert await socket.recv() == VERSION_38
        await socket.send(VERSION_38)
        assert await socket.recv() == _SECURITY_NONE_OFFERED
        await socket.send(bytes([1]))
        assert await socket.recv() == _PASSED
        await socket.send(b"ping")
        assert await socket.recv() == b"ping"
    return socket


async def refused(url: str) -> tuple[int | None, str | None]:
    """Open the view's socket, expecting the controller to close it before any RFB: the close
    code and reason."""
    async with asyncio.timeout(WAIT_S), connect(url, subprotocols=_BINARY) as socket:
        with pytest.raises(ConnectionClosed):
            await socket.recv()
        return socket.close_code, socket.close_reason


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check`` answers True (within ``WAIT_S``)."""
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.05)


async def until_quiet(reads: list[str]) -> None:
    """Wait until no login's row has been read for 0.6 s (three of the wait's polls); fail if
    the reads go on for ``WAIT_S``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    settled = len(reads)
    while loop.time() < deadline:
        await asyncio.sleep(0.6)
        if len(reads) == settled:
            return
        settled = len(reads)
    pytest.fail(f"the view kept reading the login after its client left ({len(reads)} reads)")


async def seat_free(view: View) -> bool:
    """Whether a viewer gets through now (closing it again)."""
    try:
        socket = await relayed(view.url)
    except ConnectionClosed:
        return False
    await socket.close()
    return True


@pytest.fixture
async def capped(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller in process with at most one viewer per login."""
    settings = api_settings.with_overrides(view_max_viewers=1)
    async with running_api(settings, fake_backend, tmp_path / "image") as running:
        yield running


# --- a viewer that leaves before the login is shown ------------------------------------------


async def test_a_viewer_that_leaves_before_the_login_is_shown_ends_the_sockets_wait_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The socket waits for awaiting_user, reading the login's row; a client that went away
    # meanwhile kept it reading (and its handler running) until the stage's deadline.
    async with knocked(api, monkeypatch) as (view, client, reads):
        client.close()  # the client goes away before the login is shown

        await until_quiet(reads)
        assert view.vnc.open == 0


# --- how many viewers a login takes ----------------------------------------------------------


async def test_a_login_takes_its_cap_of_viewers_and_refuses_the_next_with_4429(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    settings = api_settings.with_overrides(view_max_viewers=2)
    async with (
        running_api(settings, fake_backend, tmp_path / "image") as api,
        viewed(api, AuthStatus.AWAITING_USER) as view,
    ):
        first, second = await relayed(view.url), await relayed(view.url)

        code, reason = await refused(view.url)

        assert code == 4429
        assert reason == "this login's view is open in 2 places already, the most it may be"
        assert view.vnc.open == 2  # the refused socket never reached the VM's screen
        await first.close()
        await until(lambda: seat_free(view))  # the seat the first left is free again
        await second.close()


def test_the_viewer_cap_defaults_to_four_and_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).view_max_viewers == 4
    assert Settings.from_env({"HEARTH_VIEW_MAX_VIEWERS": "7"}).view_max_viewers == 7
    with pytest.raises(ConfigError, match="HEARTH_VIEW_MAX_VIEWERS"):
        Settings.from_env({"HEARTH_VIEW_MAX_VIEWERS": "0"})


async def test_a_relay_the_vm_resets_frees_its_seat(capped: Api) -> None:
    async with viewed(capped, AuthStatus.AWAITING_USER) as view:
        viewer = await relayed(view.url)
        assert (await refused(view.url))[0] == 4429

        view.vnc.drop_all()  # the VM's side resets: the relay ends with an error
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                await viewer.recv()

        assert await seat_free(view)


async def test_a_viewer_the_vms_vnc_server_refuses_frees_its_seat(capped: Api) -> None:
    async with viewed(capped, AuthStatus.AWAITING_USER) as view:
        right, view.vnc.password = view.vnc.password, "not-the-vms-password"
        view.vnc.gate.clear()
        holding = await connect(view.url, subprotocols=_BINARY)  # accepted: its seat is taken
        assert (await refused(view.url))[0] == 4429

        view.vnc.gate.set()  # the VNC server answers now, and refuses the password
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                await holding.recv()
        assert holding.close_code == 1011

        view.vnc.password = right
        assert await seat_free(view)


async def test_a_viewer_that_leaves_while_waiting_frees_its_seat(
    capped: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with knocked(capped, monkeypatch) as (view, client, _):
        # Waiting sockets count: each holds the controller's resources too.
        assert (await refused(view.url))[0] == 4429
        client.close()
        await view.show_login()

        await until(lambda: seat_free(view))


async def test_a_viewer_that_leaves_during_the_vnc_handshake_frees_its_seat(
    capped: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # Writing the RFB greeting to a viewer that has gone fails: its seat is freed all the same,
    # and the server logs no application error for a viewer that left.
    async with viewed(capped, AuthStatus.AWAITING_USER) as view:
        view.vnc.gate.clear()
        leaving = await connect(view.url, subprotocols=_BINARY)  # accepted: its seat is taken
        assert (await refused(view.url))[0] == 4429
        await leaving.close()

        view.vnc.gate.set()
        await until(lambda: seat_free(view))
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]


# --- a view once its login no longer awaits the user -----------------------------------------


@pytest.mark.parametrize(
    ("ending", "code", "reason"),
    [
        (AuthStatus.CANCELLED, 4401, "this login has ended (cancelled)"),
        (AuthStatus.FAILED, 4401, "this login has ended (failed)"),
        (
            AuthStatus.CREDENTIALS_CAPTURED,
            4409,
            "this login no longer awaits the user (credentials_captured)",
        ),
    ],
)
async def test_an_open_view_is_closed_once_its_login_no_longer_awaits_the_user(
    api: Api, ending: AuthStatus, code: int, reason: str
) -> None:
    # The relay never read the login again: a viewer connected while it awaited the user kept
    # driving the Browser VM's screen after the login was cancelled, failed or captured.
    async with viewed(api, AuthStatus.AWAITING_USER) as view:
        viewer = await relayed(view.url)
        await api.ctl.store.auth_sessions.transition(
            view.session.id, AuthStatus.AWAITING_USER, ending
        )

        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                await viewer.recv()

        assert (viewer.close_code, viewer.close_reason) == (code, reason)
        await until(lambda: _no_screen_open(view))
        if code == 4409:  # a viewer that comes back (noVNC reconnects) is told why too
            assert await refused(view.url) == (code, reason)
            assert view.vnc.open == 0


async def _no_screen_open(view: View) -> bool:
    return view.vnc.open == 0
