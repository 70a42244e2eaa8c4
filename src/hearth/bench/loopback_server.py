"""``LoopbackServer``: an ASGI app served by uvicorn on loopback, inside the bench's process.

uvicorn does the HTTP/1.1; this class binds a socket on ``127.0.0.1`` (port 0 unless given),
wraps it in TLS when given a certificate, and runs uvicorn's ``startup``/``shutdown`` -- not
``serve``, which would take over the process's SIGINT/SIGTERM handlers (a bench's Ctrl-C must
cancel the bench, whose teardown then closes this server). Two kinds of app are served:

* a provider's stand-in (``lifespan=False``): closing does not wait for open streams, a CLI still
  holding a keep-alive connection or a slow stream is cut;
* the controller's app (``lifespan=True``): its lifespan (the composition root) is entered when
  the server starts and left when it closes, after open streams had a moment to end.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from hearth.bench.errors import BenchError
from hearth.bench.standins.ca import LeafFiles
from hearth.closing import Closing

# How long open requests (an event stream, say) get to end when the server closes.
GRACEFUL_SHUTDOWN_S = 1


class LoopbackServer(Closing):
    """Serves ``app`` on ``host:port`` (HTTPS with ``tls``) until closed; ``async with`` starts
    it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: LeafFiles | None = None,
        lifespan: bool = False,
    ) -> None:
        self._config = uvicorn.Config(
            app,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            lifespan="on" if lifespan else "off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            # A stand-in's "dropped" stream ends the ASGI call mid-body on purpose; uvicorn would
            # log that as an application error. A lifespan that fails to start is logged.
            log_level=logging.WARNING if lifespan else logging.CRITICAL,
        )
        self._lifespan = lifespan
        self._bind = (host, port)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> None:
        """Bind, enter the app's lifespan if it has one, and start accepting connections."""
        if self._server is not None:
            raise BenchError("the loopback server is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self._bind)
        sock.listen(128)
        sock.setblocking(False)
        self._config.load()
        server = uvicorn.Server(self._config)
        server.lifespan = self._config.lifespan_class(self._config)
        try:
            await server.startup(sockets=[sock])
        except SystemExit as exc:  # uvicorn's answer to an app whose lifespan failed to start
            sock.close()
            raise BenchError("the app served on loopback failed to start (see its log)") from exc
        except BaseException:
            sock.close()
            raise
        self._server, self._socket = server, sock

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._socket is None:
            raise BenchError("the loopback server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def address(self) -> str:
        """``ip:port``, the form an egress pin's target takes."""
        return f"{self._bind[0]}:{self.port}"

    @property
    def url(self) -> str:
        """``http(s)://ip:port``."""
        scheme = "https" if self._config.ssl_certfile else "http"
        return f"{scheme}://{self.address}"

    async def close(self) -> None:
        """Stop listening, end the connections (and the app's lifespan); safe to call twice."""
        server, self._server = self._server, None
        sock, self._socket = self._socket, None
        if server is None:
            return
        # Without a lifespan there is nothing to wait for: streams still open are cut.
        server.force_exit = not self._lifespan
        await server.shutdown(sockets=[sock] if sock is not None else None)
