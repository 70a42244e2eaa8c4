"""The agent's streamed answers are chunked: one whose source fails part way lacks the last
chunk, so the client sees a broken body, never a whole shorter one (a directory's tar cut short
would otherwise extract as a smaller tree). Served by the agent's own HTTP server on loopback."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import pytest

from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.routing import Request, Response
from hearth_agent.server import AgentHTTPServer, AgentRequestHandler
from tests.loopback_api import LOOPBACK, listening

# More than loopback's socket buffers hold: the agent's write waits for the client to read.
BIG = 32 * 1024 * 1024
BIG_BODY = b"x" * BIG
# Shorter than the wait below: the handler's timeout for a plain request.
SHORT_TIMEOUT_S = 0.3


class Streams:
    """An app with one route: ``/whole`` streams three chunks, ``/broken`` fails after two."""

    def __init__(self) -> None:
        self.metrics = AgentMetrics(version="test", providers=())

    def dispatch(self, request: Request) -> tuple[str, Response]:
        if request.path == "/upload":
            body = request.open_body(BIG)
            size = len(body.read())
            return request.path, Response(200, str(size).encode(), "text/plain")
        if request.path == "/big":
            return request.path, Response(200, b"", "application/x-tar", stream=iter([BIG_BODY]))

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
    server = AgentHTTPServer(LOOPBACK, app=Streams(), logger=JsonLogger(stream=io.StringIO()))  # type: ignore[arg-type]
    with listening(server) as served:
        yield served


def test_a_whole_stream_arrives_whole_and_chunked(url: str) -> None:
    answer = httpx.get(f"{url}/whole")
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == b"first second third"


def test_a_stream_whose_source_fails_reads_as_broken(url: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{url}/broken")


def test_a_slow_upload_is_not_cut_by_the_agents_request_timeout(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The controller passes a user's upload on chunk by chunk and waits for each up to
    # FILE_CHUNK_TIMEOUT_S; the agent cut it at its own 30 s socket timeout.
    monkeypatch.setattr(AgentRequestHandler, "timeout", SHORT_TIMEOUT_S)

    def chunks() -> Iterator[bytes]:
        yield b"first "
        time.sleep(3 * SHORT_TIMEOUT_S)
        yield b"second"

    answer = httpx.put(f"{url}/upload", content=chunks())
    assert answer.status_code == 200, answer.text
    assert answer.text == str(len(b"first second"))


def test_a_slowly_read_download_is_not_cut_by_the_agents_request_timeout(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AgentRequestHandler, "timeout", SHORT_TIMEOUT_S)
    with httpx.stream("GET", f"{url}/big") as answer:
        time.sleep(3 * SHORT_TIMEOUT_S)  # the agent's write of the body waits meanwhile
        assert len(answer.read()) == BIG
