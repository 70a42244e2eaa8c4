"""The Browser VM's screen for the user: a noVNC page and its WebSocket, proxied to the VM's VNC.

Both are gated by the session's unguessable view token (only its hash is stored), and only while
the session is in progress: the token dies with the session. The WebSocket reaches the screen
only once the user is shown the login (``awaiting_user``), never while the CLI VM is unproven,
though the login may already run in the Browser VM. QEMU forwards the VM's VNC port to
a loopback port, which any local process could open, so the VM's x11vnc asks for the VM's own
password: the proxy answers that challenge (``hearth.auth.rfb``) and offers the user's noVNC
security None, so the password never leaves the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import RedirectResponse

from hearth.api.context import Controller
from hearth.auth import rfb
from hearth.auth.flow import VNC_PORT
from hearth.auth.states import BEFORE_LOGIN, TERMINAL
from hearth.errors import NotFound, Unauthorized
from hearth.links import link_token_matches
from hearth.logging import get_logger
from hearth.store import AuthSessionRecord
from hearth_agent.vnc import vnc_password

router = APIRouter(tags=["view"])
NOVNC_DIR = Path("/usr/share/novnc")
_CHUNK = 65536
_HANDSHAKE_TIMEOUT_S = 30.0
_SHOWN_POLL_S = 0.2
_log = get_logger("api.view")


class _ViewerStream:
    """Exact-length reads from the viewer's WebSocket for the RFB handshake; what a message
    carried beyond the handshake is kept for the relay."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._buffer = bytearray()

    async def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            message = await self._websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise asyncio.IncompleteReadError(bytes(self._buffer), size)
            self._buffer += message.get("bytes") or (message.get("text") or "").encode()
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    def leftover(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


async def _session_for(ctl: Controller, session_id: str, token: str) -> AuthSessionRecord:
    try:
        record = await ctl.store.auth_sessions.get(session_id)
    except NotFound:
        raise Unauthorized("unknown view link") from None
    if not link_token_matches(token, record.view_token_hash):
        raise Unauthorized("wrong view token")
    if record.status in TERMINAL:
        raise Unauthorized(f"this login has ended ({record.status.value})")
    return record


@router.get("/view/{session_id}", include_in_schema=False)
async def view_page(
    session_id: str, request: Request, token: str = Query(min_length=8, max_length=128)
) -> RedirectResponse:
    """Check the token, then open noVNC on this session's WebSocket."""
    ctl: Controller = request.app.state.controller
    await _session_for(ctl, session_id, token)
    path = quote(f"view/{session_id}/websockify?token={token}", safe="")
    return RedirectResponse(
        f"/novnc/vnc.html?autoconnect=1&resize=scale&reconnect=1&path={path}", status_code=302
    )


@router.websocket("/view/{session_id}/websockify")
async def view_socket(websocket: WebSocket, session_id: str, token: str = "") -> None:
    """Relay bytes between noVNC and the Browser VM's VNC server."""
    ctl: Controller = websocket.app.state.controller
    try:
        record = await _session_for(ctl, session_id, token)
        while record.status in BEFORE_LOGIN:
            # The login may already run in the Browser VM, but the user signs in only once the
            # CLI VM is proven healthy (awaiting_user); noVNC's connection waits for that.
            await asyncio.sleep(_SHOWN_POLL_S)
            record = await _session_for(ctl, session_id, token)
        vm = ctl.vms.live_vm(record.browser_vm_id or "")
        port = vm.ports[VNC_PORT]
        if vm.token is None:
            raise NotFound("the Browser VM is not claimed")
    except (Unauthorized, NotFound, KeyError):
        await websocket.close(code=4401)
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    viewer = _ViewerStream(websocket)
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await rfb.authenticate(reader, writer, vnc_password(vm.token))
                await rfb.greet_viewer(viewer.read_exactly, websocket.send_bytes)
            except BaseException:
                writer.close()
                raise
    except (OSError, TimeoutError, asyncio.IncompleteReadError, rfb.RfbRefused) as exc:
        _log.warning("view_vnc_failed", session_id=session_id, error=type(exc).__name__)
        with contextlib.suppress(Exception):
            await websocket.close(code=1011)
        return
    writer.write(viewer.leftover())

    async def to_vm() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def to_browser() -> None:
        while data := await reader.read(_CHUNK):
            await websocket.send_bytes(data)

    tasks = [asyncio.create_task(to_vm()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Either side's end (a disconnect, a reset) is the relay's end, not an error to log.
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()
