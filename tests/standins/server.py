"""``StandInServer``: an ASGI app served over TLS on loopback, with a leaf of the test CA.

uvicorn (already a dependency of the controller) does the HTTP/1.1; this class only binds a
socket on ``127.0.0.1`` (port 0 unless given), wraps it in TLS with the leaf certificate, and
runs uvicorn's ``startup``/``shutdown`` -- not ``serve``, which would take over the test
process's SIGINT/SIGTERM handlers. Closing does not wait for open streams: a CLI still holding a
keep-alive connection or a slow stream is cut.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from hearth.closing import Closing
from tests.standins.ca import LeafFiles


class StandInServer(Closing):
    """Serves ``app`` over HTTPS on ``host:port`` until closed; ``async with`` starts it."""

    def __init__(self, app: ASGIApp, *, leaf: LeafFiles, host: str = "127.0.0.1", port: int = 0):
        self._config = uvicorn.Config(
            app,
            ssl_certfile=str(leaf.cert),
            ssl_keyfile=str(leaf.key),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
            # A "dropped" stream ends the ASGI call mid-body on purpose; uvicorn would log that
            # as an application error.
            log_level=logging.CRITICAL,
        )
        self._bind = (host, port)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self.leaf = leaf

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the stand-in server is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self._bind)
        sock.listen(128)
        sock.setblocking(False)
        self._config.load()
        server = uvicorn.Server(self._config)
        server.lifespan = self._config.lifespan_class(self._config)  # "off": a no-op
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server, self._socket = server, sock

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._socket is None:
            raise RuntimeError("the stand-in server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def address(self) -> str:
        """``ip:port``, the form an egress pin's target takes."""
        return f"{self._bind[0]}:{self.port}"

    async def close(self) -> None:
        """Stop listening and drop every connection; safe to call twice."""
        server, self._server = self._server, None
        sock, self._socket = self._socket, None
        if server is None:
            return
        server.force_exit = True  # do not wait for streams still open
        await server.shutdown(sockets=[sock] if sock is not None else None)
