"""The HTTP layer: a threading server whose handler answers everything in JSON, errors included."""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from collections.abc import Generator, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hearth_agent import __version__
from hearth_agent.app import AgentApp
from hearth_agent.bodies import RequestBody
from hearth_agent.errors import BadRequest, BodyTooLarge, LengthRequired
from hearth_agent.httpserver import LocalHTTPServer
from hearth_agent.log import JsonLogger
from hearth_agent.request_head import HEAD_DEADLINE_S, RequestReader
from hearth_agent.routing import UNMATCHED_ROUTE, Request, Response, error_response
from hearth_agent.wire import FILE_CHUNK_TIMEOUT_S

MAX_BODY_BYTES = 1024 * 1024
SOCKET_TIMEOUT_S = 30.0
# A streamed body either way (a file's upload or download, an exec's events) waits as long as
# the controller does for a chunk: a user's slow transfer passes through chunk by chunk.
STREAM_SOCKET_TIMEOUT_S = FILE_CHUNK_TIMEOUT_S
# After answering without reading a body, keep reading (and discarding) a little so the client
# gets our response instead of a TCP reset; bounded so a huge upload cannot hold a thread.
DRAIN_LIMIT_BYTES = 4 * MAX_BODY_BYTES
DRAIN_DEADLINE_S = 2.0
# Connections served at once (each a thread). Past it a new one is answered 503 and closed at
# once, before anything of it is read: the controller holds an event stream per running exec and
# a few calls besides, while anyone who reaches the port could otherwise open threads unbounded.
MAX_CONNECTIONS = 64

_DIGITS = re.compile(r"[0-9]{1,19}")

# Errors the standard library raises before a request reaches our routing.
_PROTOCOL_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "malformed request line or headers"),
    414: ("uri_too_long", "request URI is too long"),
    431: ("headers_too_large", "request headers are too large"),
    501: ("method_not_implemented", "HTTP method is not supported"),
    505: ("http_version_not_supported", "HTTP version is not supported"),
}


class AgentRequestHandler(BaseHTTPRequestHandler):
    """Turns one HTTP exchange into a Request for the app and writes back its Response."""

    protocol_version = "HTTP/1.1"
    server_version = f"hearth-agent/{__version__}"
    timeout = SOCKET_TIMEOUT_S
    # The request line and headers must all be in this long after the connection was accepted.
    head_deadline_s = HEAD_DEADLINE_S
    server: AgentHTTPServer

    _started: float | None = None
    _body_consumed = False
    _body_stream: RequestBody | None = None

    def version_string(self) -> str:
        """The Server header: agent name and version only."""
        return self.server_version

    def setup(self) -> None:
        """Read the connection through a reader that bounds the request's head
        (``request_head``): its deadline runs from now."""
        super().setup()
        self.rfile.close()  # the standard library's reader, of which nothing was read yet
        self.rfile = RequestReader(
            self.connection, read_timeout_s=self.timeout, deadline_s=self.head_deadline_s
        )

    def parse_request(self) -> bool:
        """Start the request clock, then let the standard library parse line and headers; once
        they are in, the head's bounds are lifted (a stream may outlast their deadline)."""
        self._started = time.monotonic()
        try:
            return super().parse_request()
        finally:
            if isinstance(self.rfile, RequestReader):
                self.rfile.head_read()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol-level failures (bad request line, unsupported method...) in JSON.

        The standard library's message quotes the raw request line; it is not echoed back.
        """
        error_code, text = _PROTOCOL_ERRORS.get(code, ("http_error", _phrase(code)))
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # A garbled request line leaves the 0.9 default, which would suppress the status
            # line and headers; nobody speaks 0.9 to the agent, so answer in 1.1.
            self.request_version = "HTTP/1.1"
        self._count(UNMATCHED_ROUTE, code)
        self._send(error_response(code, error_code, text))
        self._finish(UNMATCHED_ROUTE, code)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: the handler logs its own JSON line per request, without the raw path."""

    def log_message(self, format: str, *args: Any) -> None:
        """Route the standard library's remaining messages (timeouts...) to the JSON log."""
        self.server.logger.warning("http_server_message", message=format % args)

    def _handle(self) -> None:
        """Hand the request to the app, whatever its method; its router answers 405 (with Allow)
        where a known path does not take the method, as for PATCH, HEAD and OPTIONS everywhere."""
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            authorization=self.headers.get("Authorization"),
            read_body=self._read_body,
            headers={name.lower(): value for name, value in self.headers.items()},
            open_body=self._open_body,
        )
        template, response = self.server.app.dispatch(request)
        self._count(template, response.status)
        try:
            self._send(response)
        finally:
            # A stream holding open files (a download) lets them go even if it was never read.
            close = getattr(response.stream, "close", None)
            if close is not None:
                close()
        self._finish(template, response.status)
        if response.exit_after:
            # Only now: the response is on the wire and counted. serve_forever returns, and the
            # process exits once this connection (and any other in flight) has been closed.
            self.server.request_shutdown(reason="admin_restart")

    # BaseHTTPRequestHandler looks for ``do_<METHOD>``; every method takes the same way in.
    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def _read_body(self) -> bytes:
        """Read exactly Content-Length bytes, refusing missing, chunked or oversized bodies."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            raise LengthRequired("chunked bodies are not supported; send Content-Length")
        if not lengths:
            raise LengthRequired("Content-Length is required")
        if len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            raise BadRequest("Content-Length is not a valid length")
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge(f"body of {length} bytes exceeds the limit of {MAX_BODY_BYTES}")
        try:
            body = self.rfile.read(length)
        except OSError as exc:
            raise BadRequest("could not read the request body") from exc
        self._body_consumed = True
        if len(body) != length:
            raise BadRequest("request body is shorter than its Content-Length")
        return body

    def _open_body(self, max_bytes: int) -> RequestBody:
        """The body as a stream (Content-Length or chunked), at most ``max_bytes`` of it."""
        lengths = self.headers.get_all("Content-Length") or []
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if lengths or encoding.strip().lower() != "chunked":
                raise BadRequest("Transfer-Encoding must be chunked alone, without Content-Length")
            length = None
        elif not lengths:
            raise LengthRequired("Content-Length (or a chunked body) is required")
        elif len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            raise BadRequest("Content-Length is not a valid length")
        else:
            length = int(lengths[0])
        self.connection.settimeout(STREAM_SOCKET_TIMEOUT_S)
        self._body_stream = RequestBody(self.rfile, length=length, max_bytes=max_bytes)
        return self._body_stream

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if response.stream is None:
            self.send_header("Content-Length", str(len(response.body)))
        # A stream of no set length is chunked, so that one that breaks off (its source failed)
        # lacks the last chunk and reads as broken, not as a whole shorter body.
        chunked = (
            response.stream is not None
            and self.request_version == "HTTP/1.1"
            and not any(name.lower() == "content-length" for name, _ in response.headers)
        )
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD" or response.status < 200 or response.status in (204, 304):
            return
        if response.stream is None:
            self.wfile.write(response.body)
        else:
            self._write_stream(iter(response.stream), chunked=chunked)

    def _write_stream(self, chunks: Iterator[bytes], *, chunked: bool) -> None:
        """Write each chunk as it comes; the connection's close ends the body, and a chunked
        one's last chunk is written only once the stream has ended well."""
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.settimeout(STREAM_SOCKET_TIMEOUT_S)
        try:
            for chunk in chunks:
                if chunked and chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                elif not chunked:
                    self.wfile.write(chunk)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError as exc:
            # The client went away or stopped reading for the socket timeout; what it missed
            # stays with the stream's source for a resume.
            self.server.logger.info("stream_aborted", error_type=type(exc).__name__)
        finally:
            if isinstance(chunks, Generator):
                chunks.close()

    def _count(self, route: str, status: int) -> None:
        """Count the request before its answer is written: every answer closes its connection,
        so a client's next request (a scrape of /metrics) may reach another thread before this
        one is done; counted first, a client that has read the answer finds it counted."""
        self.server.app.metrics.observe_request(
            route=route, method=self.command or "-", status=status
        )

    def _finish(self, route: str, status: int) -> None:
        method = self.command or "-"
        started = self._started if self._started is not None else time.monotonic()
        self.server.logger.info(
            "http_request",
            method=method,
            route=route,
            status=status,
            duration_ms=round((time.monotonic() - started) * 1000.0, 3),
        )
        self._discard_unread_body()

    def _discard_unread_body(self) -> None:
        headers = getattr(self, "headers", None)
        streamed = self._body_stream is not None and self._body_stream.complete
        if self._body_consumed or streamed or headers is None:
            return
        declared = headers.get("Content-Length", "").strip()
        if not (_DIGITS.fullmatch(declared) and int(declared) > 0) and not headers.get(
            "Transfer-Encoding"
        ):
            return
        remaining = int(declared) if _DIGITS.fullmatch(declared) else DRAIN_LIMIT_BYTES
        remaining = min(remaining, DRAIN_LIMIT_BYTES)
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(DRAIN_DEADLINE_S)
            while remaining > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(65536, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass  # the client went away or stalled: nothing left to protect


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "HTTP error"


class AgentHTTPServer(LocalHTTPServer):
    """A ThreadingHTTPServer that carries the app and logger and logs errors as JSON.

    Request threads are daemons so a stalled client cannot block exit, but the server counts
    them, so shutdown can give in-flight writes a bounded time to finish, and serves at most
    ``max_connections`` at once: past that a connection is answered 503 on the spot and closed.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        app: AgentApp,
        logger: JsonLogger,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.app = app
        self.logger = logger
        self.max_connections = max_connections
        self._idle = threading.Condition()
        self._in_flight = 0
        self._refusing = False  # whether the last connection was refused (its run is logged once)
        # Taken once and never released: the first shutdown request wins, later ones are no-ops.
        # Non-blocking, so a signal handler interrupting the main thread can never deadlock on it.
        self._shutdown_once = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, AgentRequestHandler)

    def request_shutdown(self, *, reason: str) -> None:
        """Make serve_forever return, from any thread or a signal handler; only once.

        ``shutdown()`` waits for serve_forever to return, so it runs on a thread of its own: it
        would deadlock on the thread serving the loop or on a request thread being waited for.
        """
        if not self._shutdown_once.acquire(blocking=False):
            return
        self.logger.info("stopping", reason=reason)
        threading.Thread(target=self.shutdown, name="shutdown", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the connection, counted as in flight from now on; past
        ``max_connections`` in flight, refuse it instead, without reading anything of it."""
        with self._idle:
            full = self._in_flight >= self.max_connections
            first_refusal = full and not self._refusing
            self._refusing = full
            if not full:
                self._in_flight += 1
        if full:
            if first_refusal:  # once per run of refusals: a flood must not flood the log too
                self.logger.warning("connections_refused", max_connections=self.max_connections)
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handle one connection on its own thread; then it no longer counts as in flight."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 if the socket takes it at once (it never blocks the accepting thread),
        count it, and close the connection."""
        response = error_response(
            503, "too_many_connections", "the agent serves as many connections as it takes"
        )
        head = (
            f"HTTP/1.1 503 {_phrase(503)}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nRetry-After: 1\r\n"
            "Connection: close\r\n\r\n"
        )
        self.app.metrics.observe_request(route=UNMATCHED_ROUTE, method="-", status=503)
        try:
            request.setblocking(False)
            request.send(head.encode("ascii") + response.body)
        except OSError:
            pass  # the client went away, or its window is full: it gets the close alone
        self.shutdown_request(request)

    def wait_until_idle(self, deadline_s: float) -> int:
        """Wait up to ``deadline_s`` for in-flight connections; return how many remain."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=deadline_s)
            return self._in_flight

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection (client reset, broken pipe) as JSON instead of a traceback."""
        exc = sys.exc_info()[1]
        self.logger.warning(
            "connection_error", error_type=type(exc).__name__ if exc is not None else "unknown"
        )
