"""The agent's threading HTTP server base: no reverse-DNS lookup, a real backlog, knows its port."""

from __future__ import annotations

import socketserver
from http.server import ThreadingHTTPServer


class LocalHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that never resolves its own name (that lookup can hang in a VM).

    Its listen backlog is 128, not socketserver's 5: ten clients connecting at once (commands
    started together, each with its event stream) overflowed 5 in a VM under emulation, and QEMU's
    user networking then dropped a connection without an answer.
    """

    request_queue_size = 128

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        return int(self.server_address[1])
