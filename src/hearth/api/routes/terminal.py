"""``/api/vms/{id}/terminal``: a one-time link to a page whose WebSocket carries a shell on a
pseudo-terminal in the CLI VM (``hearth.control.terminals``).

    POST /api/vms/{id}/terminal      API key, owner or admin → 201 {terminalId, url, expiresInS}
    GET  /terminal/{terminalId}      the page (xterm.js); holds no secret
    WS   /terminal/{terminalId}/socket

The link's token rides in the URL's fragment (``#token=…``), which browsers never send: it is in
no request line, access log or Referer. The page presents it in the socket's first message:

    page → {"type": "open", "token", "cols", "rows"}           text, first, within 10 s
    page → binary frames (keystrokes); {"type": "resize", "cols", "rows"}
    controller → binary frames (the terminal's output); {"type": "ready" | "exit" | "error", …}

A binary frame may be as big as uvicorn takes (``ws_max_size``, 16 MiB): the service splits it
into the writes the agent takes, rather than closing with 1009, because xterm.js sends a whole
paste as one frame. While the shell does not read, the socket is not read once the service holds
``INPUT_QUEUE_BYTES`` of the page's input (backpressure).

A text frame is JSON of at most ``MAX_TEXT_CHARS``, looked at before it is parsed: the first
one comes before any token is checked. A first message that is not such a frame, or not an
``open`` with a token, is refused as a wrong token is.

A refusal sends ``{"type": "error", "code", "message"}`` and closes with code 4000 + the HTTP
status the same refusal has elsewhere: 4401 for a link unknown, used, expired or with a wrong
token, or a first message that is no opening; 4404 for a VM gone; 4409 for a VM not ready or not
a CLI VM; 4429 past the per-VM cap.

Every write to the page waits at most ``PAGE_WRITE_TIMEOUT_S`` (uvicorn's send waits while the
page does not read): a page that took nothing for that long is gone, its terminal ends (the
shell killed) and the socket is left to the server to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from pydantic import Field

from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.context import Controller
from hearth.api.errors import websocket_close
from hearth.api.schemas import ERROR_RESPONSES, WireModel
from hearth.api.streams import key_revoked
from hearth.control.terminals import Resize
from hearth.errors import HearthError, InvalidInput, NotFound, Unauthorized
from hearth.logging import get_logger
from hearth.terminal_page import PAGE, PAGE_DIR, require_installed

router = APIRouter(tags=["terminal"])
_log = get_logger("api.terminal")
OPEN_TIMEOUT_S = 10.0
MAX_TOKEN_CHARS = 128
# A text frame (an opening, a size change) holds a few dozen characters; a longer one is not
# parsed: anyone may send the first one, and json.loads on uvicorn's 16 MiB holds the loop.
MAX_TEXT_CHARS = 4096
# How long a write to the page may wait for it to read what was sent before; past it, it is gone.
PAGE_WRITE_TIMEOUT_S = 30.0
_OPENING = 'the first message must be {"type": "open", "token", "cols", "rows"}'
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # xterm.js styles its rows with a <style> element of its own: inline styles are allowed.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


class TerminalOpened(WireModel):
    """A one-time terminal link: open ``url`` (relative to the API's) in a browser within
    ``expiresInS``; it works once."""

    terminal_id: str
    url: str = Field(description="/terminal/{terminalId}#token=… (the token is shown only here)")
    expires_in_s: float


@router.post("/api/vms/{vm_id}/terminal", status_code=201, responses=ERROR_RESPONSES)
async def open_terminal(vm_id: str, key: Key, ctl: Ctl) -> TerminalOpened:
    """A one-time link to a login shell on a terminal in this CLI VM (409 unless it is ready)."""
    link = await ctl.terminals.open_link(vm_id, scope_of(key), key_id=key.id)
    return TerminalOpened(
        terminal_id=link.terminal_id,
        url=f"/terminal/{link.terminal_id}#token={link.token}",
        expires_in_s=link.expires_in_s,
    )


@router.get("/terminal/{terminal_id}", include_in_schema=False)
async def terminal_page(terminal_id: str, request: Request) -> FileResponse:
    """The page (404 once its link is used or expired; 503 until xterm.js is installed)."""
    ctl: Controller = request.app.state.controller
    if not ctl.terminals.is_pending(terminal_id):
        raise NotFound("this terminal link is unknown, used or expired; ask for a new one")
    require_installed(ctl.settings.cache_dir)
    return FileResponse(PAGE_DIR / PAGE, media_type="text/html", headers=PAGE_HEADERS)


class _SocketPeer:
    """The page's WebSocket as ``TerminalService`` sees it. Each write waits at most
    ``PAGE_WRITE_TIMEOUT_S``; past it the page is gone and every write raises TimeoutError."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self.gone = False
        self._stalled = False

    async def receive(self) -> bytes | Resize | None:
        while not self.gone:
            message = await self._websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.gone = True
                break
            if message.get("bytes") is not None:
                data: bytes = message["bytes"]
                return data
            try:
                control = _control(message.get("text") or "")
                if control.get("type") == "resize":
                    return Resize.of(control)
                raise InvalidInput(f"unknown message type {str(control.get('type'))[:40]!r}")
            except InvalidInput as exc:
                with contextlib.suppress(TimeoutError):  # gone: the loop ends
                    await self.send_status(
                        {"type": "error", "code": exc.code, "message": exc.message}
                    )
        return None

    async def send_output(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def send_status(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket, unless the page is gone."""
        if not self.gone:
            with contextlib.suppress(TimeoutError):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _send(self, message: dict[str, Any]) -> None:
        if self._stalled:
            raise TimeoutError
        try:
            async with asyncio.timeout(PAGE_WRITE_TIMEOUT_S):
                await self._websocket.send(message)
        except TimeoutError:
            self.gone = self._stalled = True
            raise
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the page has gone: ``receive`` says so


def _control(text: str) -> dict[str, Any]:
    """A text frame's JSON object; InvalidInput for anything else (a long one is not parsed)."""
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"a text message must be at most {MAX_TEXT_CHARS} characters")
    try:
        control = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        control = None
    if not isinstance(control, dict):
        raise InvalidInput("a text message must be a JSON object with a 'type'")
    return control


async def _opening(websocket: WebSocket) -> tuple[str, Resize]:
    """The first message: the link's token and the page's size."""
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            message = await websocket.receive()
    except TimeoutError:
        raise Unauthorized("the page did not present its token in time") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    try:
        control = _control(text if isinstance(text, str) else "")
    except InvalidInput:
        raise Unauthorized(_OPENING) from None
    token = control.get("token")
    if control.get("type") != "open" or not isinstance(token, str):
        raise Unauthorized(_OPENING)
    return token[:MAX_TOKEN_CHARS], Resize.of(control)


@router.websocket("/terminal/{terminal_id}/socket")
async def terminal_socket(websocket: WebSocket, terminal_id: str) -> None:
    """Claim the link with the page's first message, then relay the terminal until it ends."""
    ctl: Controller = websocket.app.state.controller
    await websocket.accept()
    peer = _SocketPeer(websocket)
    try:
        token, size = await _opening(websocket)
        grant = ctl.terminals.claim(terminal_id, token)

        revoked = functools.partial(key_revoked, ctl.store)
        await ctl.terminals.run(grant, peer, size, revoked=revoked)
    except WebSocketDisconnect:
        return
    except HearthError as exc:
        _log.info("terminal_refused", terminal_id=terminal_id, code=exc.code)
        with contextlib.suppress(TimeoutError):
            await peer.send_status({"type": "error", "code": exc.code, "message": exc.message})
        await peer.close(*websocket_close(exc))
        return
    await peer.close(1000)
