"""The agent's streamed answers are chunked: one whose source fails part way lacks the last
chunk, so the client sees a broken body, never a whole shorter one (a directory's tar cut short
would otherwise extract as a smaller tree). Served by the agent's own HTTP server on loopback."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import pytest

from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.routing import Request, Response
from hearth_agent.server import AgentHTTPServer


class Streams:
    """An app with one route: ``/whole`` streams three chunks, ``/broken`` fails after two."""

    def __init__(self) -> None:
        self.metrics = AgentMetrics(version="test", providers=())

    def dispatch(self, request: Request) -> tuple[str, Response]:
        def chunks() -> Iterator[bytes]:
            yield b"first "
            yield b""  # an empty chunk must not end the body
            yield b"second "
            if request.path == "/broken":
                raise OSError("the source could not be read")
            yield b"third"

        return request.path, Response(200, b"", "application/x-tar", stream=chunks())


@pytest.fixture
def url() -> Iterator[str]:
    server = AgentHTTPServer(
        ("127.0.0.1", 0), app=Streams(), logger=JsonLogger(stream=io.StringIO())
    )  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_whole_stream_arrives_whole_and_chunked(url: str) -> None:
    answer = httpx.get(f"{url}/whole")
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == b"first second third"


def test_a_stream_whose_source_fails_reads_as_broken(url: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{url}/broken")
