"""The bounds on a request's head, served by the agent's own HTTP server on loopback: a head
trickled in is cut at its deadline (not per read), oversized or overlong headers answer 431, and
nothing after the head (a stream, an upload) is held to that deadline."""

from __future__ import annotations

import io
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.request_head import MAX_HEADER_LINE_BYTES, MAX_HEADERS
from hearth_agent.routing import Request, Response
from hearth_agent.server import AgentHTTPServer, AgentRequestHandler

HEAD_DEADLINE_S = 0.6
READ_TIMEOUT_S = 0.4  # longer than the gap between the trickled bytes below


class Slow:
    """An app whose ``/slow`` streams for longer than the head's deadline; ``/upload`` counts
    a body; anything else answers 200 with its path."""

    def __init__(self) -> None:
        self.metrics = AgentMetrics(version="test", providers=())

    def dispatch(self, request: Request) -> tuple[str, Response]:
        if request.path == "/upload":
            size = len(request.open_body(1024).read())
            return request.path, Response(200, str(size).encode(), "text/plain")
        if request.path == "/slow":

            def chunks() -> Iterator[bytes]:
                yield b"first "
                time.sleep(3 * HEAD_DEADLINE_S)
                yield b"second"

            return request.path, Response(200, b"", "text/plain", stream=chunks())
        return request.path, Response(200, request.path.encode(), "text/plain")


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An agent HTTP server with a short head deadline and read timeout."""
    monkeypatch.setattr(AgentRequestHandler, "timeout", READ_TIMEOUT_S)
    monkeypatch.setattr(AgentRequestHandler, "head_deadline_s", HEAD_DEADLINE_S, raising=False)
    server = AgentHTTPServer(
        ("127.0.0.1", 0),
        app=Slow(),  # type: ignore[arg-type]
        logger=JsonLogger(stream=io.StringIO()),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def send_head(port: int, head: bytes) -> tuple[int, dict[str, object]]:
    """Send a request head; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body) if body.startswith(b"{") else {}


def test_a_head_trickled_in_a_byte_at_a_time_is_cut_at_its_deadline(port: int) -> None:
    # Each byte comes well within the read timeout, so only a deadline for the whole head ends it.
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 5 * HEAD_DEADLINE_S:
            try:
                sock.sendall(b"x")
            except OSError:  # reset: the agent closed the connection
                closed_after = time.monotonic() - started
                break
            readable, _, _ = select.select([sock], [], [], READ_TIMEOUT_S / 4)
            if readable and sock.recv(65536) == b"":
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "a trickled head held its connection past its deadline"
    assert closed_after < HEAD_DEADLINE_S + READ_TIMEOUT_S


def test_more_headers_than_the_agent_takes_answer_431(port: int) -> None:
    fits = b"".join(b"X-H%d: v\r\n" % n for n in range(MAX_HEADERS))
    assert send_head(port, b"GET /fits HTTP/1.1\r\n" + fits + b"\r\n")[0] == 200

    status, body = send_head(port, b"GET /many HTTP/1.1\r\n" + fits + b"X-One-More: v\r\n\r\n")

    assert status == 431
    assert body["error"] == {
        "code": "headers_too_large",
        "message": "request headers are too large",
    }


def test_a_header_line_longer_than_the_agent_takes_answers_431(port: int) -> None:
    longest = b"X-Long: " + b"v" * (MAX_HEADER_LINE_BYTES - len(b"X-Long: \r\n")) + b"\r\n"
    assert send_head(port, b"GET /fits HTTP/1.1\r\n" + longest + b"\r\n")[0] == 200

    status, _ = send_head(port, b"GET /long HTTP/1.1\r\nX-Long: v" + longest + b"\r\n")

    assert status == 431


def test_a_long_request_line_is_still_taken(port: int) -> None:
    # A file's path, URL-encoded, may be long: the request line keeps the standard library's cap.
    path = b"/files?path=" + b"%2F" * 10_000
    assert send_head(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


def test_a_stream_and_an_upload_outlast_the_heads_deadline(port: int) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first "
        time.sleep(3 * HEAD_DEADLINE_S)
        yield b"second"

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        assert client.get("/slow").content == b"first second"
        upload = client.put("/upload", content=chunks())
    assert (upload.status_code, upload.text) == (200, "12")
