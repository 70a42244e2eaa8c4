"""The Browser VM's screen for the user: a noVNC page and its WebSocket, proxied to the VM's VNC.

Both are gated by the session's unguessable view token (only its hash is stored), and only while
the session is in progress: the token dies with the session, or once the API key whose request
started the login is revoked. The WebSocket reaches the screen only once the user is shown the
login (``awaiting_user``), never while the CLI VM is unproven, though the login may already run in
the Browser VM. QEMU forwards the VM's VNC port to a loopback port, which any local process could
open, so the VM's x11vnc asks for the VM's own password: the proxy answers that challenge
(``hearth.auth.rfb``) and offers the user's noVNC security None, so the password never leaves the
controller.

A login's view takes at most ``view_max_viewers`` sockets at once, a socket still waiting for
the login to be shown among them; the next is accepted only to be closed with 4429 and why.
A socket that waits ends as soon as its client goes away.

The screen is the user's only while the login awaits them: an open view reads the login's row
every ``_WATCH_POLL_S`` and ends once it has moved on, closed with 4401 once the login has ended
or its key was revoked (its token is dead) or 4409 once its credentials are captured, each with
the reason; a socket opened after that is closed the same way before it reaches the screen, as
is one whose token is wrong (4401): each is accepted first, so that the viewer gets the code and
the reason (noVNC, still connecting, gives up on either and does not reconnect, as after a
refused handshake).

The link (``GET /view/{id}?token=``) and noVNC's files carry ``VIEW_HEADERS``: no page of another
site may frame them (the user types their provider password there), no Referer carries the token
on, nothing is cached. Until Debian's ``novnc`` is installed the link answers 503 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

from hearth.api.context import Controller
from hearth.api.errors import websocket_close
from hearth.api.routes.terminal import PAGE_HEADERS
from hearth.api.schemas import ERROR_RESPONSES, ERROR_STATUSES
from hearth.api.streams import key_revoked
from hearth.auth import rfb
from hearth.auth.flow import VNC_PORT
from hearth.auth.states import BEFORE_LOGIN, TERMINAL, AuthStatus
from hearth.errors import Conflict, NotFound, ToolMissing, Unauthorized
from hearth.links import link_token_matches
from hearth.logging import get_logger
from hearth.store import AuthSessionRecord
from hearth_agent.vnc import vnc_password

router = APIRouter(tags=["view"])
NOVNC_DIR = Path("/usr/share/novnc")
_CHUNK = 65536
_HANDSHAKE_TIMEOUT_S = 30.0
_SHOWN_POLL_S = 0.2
# How often an open view reads its login's row, to end once the login no longer awaits the user.
_WATCH_POLL_S = 1.0
_log = get_logger("api.view")
# The terminal page's headers, with noVNC's own policy: its page loads its scripts, styles,
# images, font, locale and bell from this host, draws the VM's cursor from a data: URL and opens
# its WebSocket to this host; it sets styles through the DOM only, never inline.
VIEW_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; font-src 'self'; media-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    # frame-ancestors' predecessor, for browsers that predate it.
    "X-Frame-Options": "DENY",
}
_VIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    302: {"description": "To noVNC's page (``/novnc/vnc.html``), connecting to this login's view"},
    400: ERROR_RESPONSES[400],
    401: {
        **ERROR_RESPONSES[401],
        "description": "The link is unknown, its token wrong, its login has ended, or the "
        "API key that started the login was revoked",
    },
    422: {**ERROR_RESPONSES[422], "description": f"{ERROR_STATUSES[422]} (the token)"},
    503: {
        **ERROR_RESPONSES[503],
        "description": "noVNC is not installed on this host (tool_missing); the message names "
        "the install step",
    },
}


class _NoVncFiles(StaticFiles):
    """noVNC's files, every answer with ``VIEW_HEADERS`` (a refusal too)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            headers = {**(exc.headers or {}), **VIEW_HEADERS}
            raise HTTPException(exc.status_code, exc.detail, headers=headers) from None
        response.headers.update(VIEW_HEADERS)
        return response


def novnc_files() -> StaticFiles:
    """What the app serves at ``/novnc``: noVNC's files once installed (404s until then)."""
    return _NoVncFiles(directory=NOVNC_DIR, check_dir=False)


def _require_novnc() -> None:
    """ToolMissing (503) naming the install step unless noVNC's page is installed."""
    if not (NOVNC_DIR / "vnc.html").is_file():
        raise ToolMissing(
            f"noVNC is not installed under {NOVNC_DIR}: install Debian's novnc package "
            "(apt-get install novnc, as scripts/install.sh does)"
        )


class _ViewerSeats:
    """How many view sockets each login holds, against a cap per login.

    One per process: the sockets are this process's, and a login's id names that login alone.
    """

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def seat(self, session_id: str, limit: int) -> Iterator[bool]:
        """Hold one of the login's ``limit`` seats for the block (True), or none when all are
        taken (False); a seat is freed however the block ends, an error or a cancel too."""
        if self._held.get(session_id, 0) >= limit:
            yield False
            return
        self._held[session_id] = self._held.get(session_id, 0) + 1
        try:
            yield True
        finally:
            self._held[session_id] -= 1
            if not self._held[session_id]:
                del self._held[session_id]


_SEATS = _ViewerSeats()


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
    if record.api_key_id is not None and await key_revoked(ctl.store, record.api_key_id):
        raise Unauthorized("the API key that started this login was revoked")
    return record


async def _awaiting_user(ctl: Controller, session_id: str, token: str) -> AuthSessionRecord:
    """The login while it awaits the user; Unauthorized once it has ended, Conflict once its
    credentials are captured (the user's part is over)."""
    record = await _session_for(ctl, session_id, token)
    if record.status is not AuthStatus.AWAITING_USER:
        raise Conflict(f"this login no longer awaits the user ({record.status.value})")
    return record


async def _until_moved_on(ctl: Controller, session_id: str, token: str) -> tuple[int, str]:
    """Wait while the login awaits the user; how the view closes once it no longer does (or
    its row cannot be read: the screen is not left open on a guess)."""
    while True:
        await asyncio.sleep(_WATCH_POLL_S)
        try:
            await _awaiting_user(ctl, session_id, token)
        except (Unauthorized, Conflict) as exc:
            return websocket_close(exc)
        except Exception as exc:
            _log.warning("view_login_unread", session_id=session_id, error=type(exc).__name__)
            return 1011, "the login could not be read"


@router.get(
    "/view/{session_id}",
    status_code=302,
    response_class=RedirectResponse,
    responses=_VIEW_RESPONSES,
)
async def view_page(
    session_id: str, request: Request, token: str = Query(min_length=8, max_length=128)
) -> RedirectResponse:
    """A login's view link (``viewUrl``, no API key: its token gates it): noVNC's page on the
    login's screen, while the login is in progress."""
    ctl: Controller = request.app.state.controller
    await _session_for(ctl, session_id, token)
    _require_novnc()
    path = quote(f"view/{session_id}/websockify?token={token}", safe="")
    return RedirectResponse(
        f"/novnc/vnc.html?autoconnect=1&resize=scale&reconnect=1&path={path}",
        status_code=302,
        headers=VIEW_HEADERS,
    )


async def _shown(ctl: Controller, record: AuthSessionRecord, token: str) -> AuthSessionRecord:
    """The login once the user is shown it: the login may already run in the Browser VM, but
    the user signs in only once the CLI VM is proven healthy (awaiting_user)."""
    while record.status in BEFORE_LOGIN:
        await asyncio.sleep(_SHOWN_POLL_S)
        record = await _session_for(ctl, record.id, token)
    return record


async def _shown_or_left(
    ctl: Controller, websocket: WebSocket, record: AuthSessionRecord, token: str
) -> AuthSessionRecord | None:
    """The login once it is shown, or None when the viewer went away first. Before the socket
    is accepted, the only thing a client can send is its leaving (``websocket.disconnect``):
    the wait races it, rather than holding on until the stage's deadline."""
    if record.status not in BEFORE_LOGIN:
        return record
    await websocket.receive()  # websocket.connect
    left = asyncio.create_task(websocket.receive())
    shown = asyncio.create_task(_shown(ctl, record, token))
    try:
        await asyncio.wait((left, shown), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (left, shown):
            task.cancel()
        await asyncio.gather(left, shown, return_exceptions=True)
    if left.done() and not left.cancelled():
        return None
    return shown.result()


async def _accept(websocket: WebSocket) -> None:
    """Accept as noVNC asks: the ``binary`` subprotocol when it offers it."""
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)


@router.websocket("/view/{session_id}/websockify")
async def view_socket(websocket: WebSocket, session_id: str, token: str = "") -> None:
    """Relay bytes between noVNC and the Browser VM's VNC server, for at most
    ``view_max_viewers`` sockets of a login at once."""
    ctl: Controller = websocket.app.state.controller
    limit = ctl.settings.view_max_viewers
    try:
        try:
            record = await _session_for(ctl, session_id, token)
        except Unauthorized as exc:
            await _accept(websocket)  # accepted, so that the viewer is told why
            await websocket.close(*websocket_close(exc))
            return
        with _SEATS.seat(session_id, limit) as seated:
            if not seated:
                await _accept(websocket)  # accepted, so that the viewer is told why
                reason = f"this login's view is open in {limit} places already, the most it may be"
                await websocket.close(code=4429, reason=reason)
                return
            await _relay(ctl, websocket, record, token)
    except (WebSocketDisconnect, OSError):
        # The viewer went away while we were answering it (uvicorn's ClientDisconnected is an
        # OSError): the end of this socket, not an error of the application's.
        _log.info("view_viewer_left", session_id=session_id)


async def _relay(
    ctl: Controller, websocket: WebSocket, record: AuthSessionRecord, token: str
) -> None:
    """Once the login is shown: the VNC handshakes on both sides, then bytes both ways."""
    session_id = record.id
    try:
        shown = await _shown_or_left(ctl, websocket, record, token)
        if shown is None:
            return
        if shown.status is not AuthStatus.AWAITING_USER:
            raise Conflict(f"this login no longer awaits the user ({shown.status.value})")
        vm = ctl.vms.live_vm(shown.browser_vm_id or "")
        port = vm.ports[VNC_PORT]
        if vm.token is None:
            raise NotFound("the Browser VM is not claimed")
    except (Conflict, Unauthorized) as exc:
        await _accept(websocket)  # accepted, so that the viewer is told why
        await websocket.close(*websocket_close(exc))
        return
    except (NotFound, KeyError):
        # No screen to reach (the Browser VM gone or without VNC): refused at the handshake.
        await websocket.close(code=4401)
        return
    await _accept(websocket)
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

    moved_on = asyncio.create_task(_until_moved_on(ctl, session_id, token))
    tasks = [asyncio.create_task(to_vm()), asyncio.create_task(to_browser()), moved_on]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Either side's end (a disconnect, a reset) is the relay's end, not an error to log.
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        # The login moved on: the viewer is told why (a code and reason noVNC shows).
        close = moved_on.result() if not moved_on.cancelled() else (1000, "")
        with contextlib.suppress(Exception):
            await websocket.close(*close)
