"""A stand-in for the API on loopback, for tests of what the SDK and the command line do with
its answers (and of the agent's own server): served on a thread, its URL handed out."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing, with ``answer`` to send a whole answer."""

    def answer(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        """Send ``status``, ``headers`` and ``body`` (its length declared)."""
        self.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


# Where a stand-in listens: loopback, on a port the system picks.
LOOPBACK = ("127.0.0.1", 0)


@contextlib.contextmanager
def listening(server: socketserver.TCPServer) -> Iterator[str]:
    """``server`` (bound to ``LOOPBACK``) answering on a thread until the block ends; its
    URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
