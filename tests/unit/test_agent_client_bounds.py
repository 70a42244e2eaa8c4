"""``AgentClient`` reads what a VM's agent sends within a size limit and a deadline.

Whatever answers on a VM's agent port is its root's to choose (user code runs as root there), so
it may answer without end: a body of 64 MiB, one that trickles in forever, an event stream line
that never ends. Each ends the call with an AgentError soon, the controller's memory held to
about the cap. Against a loopback server that counts what it managed to send; the agent's own
largest answers, built by the agent's own code, still pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from hearth.agent_client import (
    MAX_ANSWER_BYTES,
    MAX_EVENT_BYTES,
    AgentClient,
    AgentError,
)
from hearth_agent.exec_events import EventType, ExecEvent, OutputDecoder
from hearth_agent.exec_pump import READ_CHUNK_BYTES
from hearth_agent.exec_routes import sse_event
from hearth_agent.files import MAX_LISTED, entry_json
from hearth_agent.server import MAX_BODY_BYTES

MIB = 1024 * 1024
FLOOD_BYTES = 64 * MIB  # the most a flooding server sends (a client without a cap reads it all)
BLOCK_BYTES = 64 * 1024
VM = "the agent of VM vm-1"


@dataclass
class Sent:
    """What the loopback server wrote after the headers, in bytes."""

    body_bytes: int = 0


Body = Callable[[asyncio.StreamWriter, Sent], Awaitable[None]]


@dataclass
class LoopbackAgent:
    """A stand-in for whatever answers on a VM's agent port: every request gets ``status`` with
    ``content_type``, then whatever ``body`` writes (the connection closes after it)."""

    status: int
    content_type: str
    body: Body
    sent: Sent = field(default_factory=Sent)
    url: str = ""

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
            writer.write(f"{head}Connection: close\r\n\r\n".encode())
            await self.body(writer, self.sent)
            await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[LoopbackAgent]:
        """Listen on a loopback port; on exit, cut every answer still being written."""
        answers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            answers[task] = writer
            await self._answer(reader, writer)

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            for writer in answers.values():
                writer.transport.abort()  # its writes fail, and its answer ends
            await asyncio.gather(*answers, return_exceptions=True)


def flood(prefix: bytes, unit: bytes) -> Body:
    """``prefix``, then ``unit`` over and over, up to FLOOD_BYTES or until the client hangs up."""

    async def write(writer: asyncio.StreamWriter, sent: Sent) -> None:
        writer.write(prefix)
        sent.body_bytes += len(prefix)
        block = unit * max(1, BLOCK_BYTES // len(unit))
        while sent.body_bytes < FLOOD_BYTES:
            writer.write(block)
            await writer.drain()
            sent.body_bytes += len(block)

    return write


def exactly(data: bytes) -> Body:
    """A body of ``data``."""

    async def write(writer: asyncio.StreamWriter, sent: Sent) -> None:
        writer.write(data)
        sent.body_bytes += len(data)

    return write


async def _peak_while(call: Awaitable[Any]) -> tuple[BaseException | None, int]:
    """What ``call`` raised (None if nothing), and the most memory Python held at once while it
    ran, above what it held before; bounded in time, so a client that reads forever fails
    rather than eats the machine."""
    # What the first request of a process imports and caches is not the call's to count.
    async with LoopbackAgent(200, "application/json", exactly(b"{}")).serving() as server:
        await AgentClient(server.url, None).health()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        try:
            await asyncio.wait_for(call, timeout=60.0)
        except AgentError as exc:
            return exc, tracemalloc.get_traced_memory()[1] - before
        return None, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


async def _events(agent: AgentClient, exec_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    return [(e.id, e.type, e.data) async for e in agent.exec_events(exec_id)]


@pytest.mark.parametrize("status", [200, 503])
async def test_a_health_answer_without_end_is_an_agent_error_after_about_the_cap(
    status: int,
) -> None:
    async with LoopbackAgent(status, "application/json", flood(b"", b" ")).serving() as server:
        agent = AgentClient(server.url, None, vm_id="vm-1")
        raised, peak = await _peak_while(agent.health())
        sent = server.sent.body_bytes
    assert isinstance(raised, AgentError)
    assert raised.message == f"{VM} answered GET /health with more than {MAX_ANSWER_BYTES} bytes"
    assert raised.agent_url == server.url
    # Stopped near the cap (the rest of what the server wrote sat in socket buffers), not at
    # the end of the flood; and the body was never held whole.
    assert sent < FLOOD_BYTES // 2
    assert peak < 2 * MAX_ANSWER_BYTES


async def test_a_health_answer_that_trickles_in_forever_ends_at_the_clients_timeout() -> None:
    async def trickle(writer: asyncio.StreamWriter, sent: Sent) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:  # a byte every 50 ms: no read ever times out
            writer.write(b" ")
            await writer.drain()
            sent.body_bytes += 1
            await asyncio.sleep(0.05)

    async with LoopbackAgent(200, "application/json", trickle).serving() as server:
        agent = AgentClient(server.url, None, timeout_s=1.0, vm_id="vm-1")
        started = time.monotonic()
        with pytest.raises(AgentError) as raised:
            await asyncio.wait_for(agent.health(), timeout=10.0)
        elapsed = time.monotonic() - started
    assert raised.value.message == f"{VM} did not answer GET /health within 1 s"
    assert elapsed < 3.0


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (lambda agent: agent.files_list("big"), "GET /files/list?path=big"),
        (lambda agent: agent.files_read("big"), "GET /files"),
        (lambda agent: _events(agent, "e1"), "GET /exec/e1/events?after=0"),
        (lambda agent: agent.credentials_document("oidc"), "GET /credentials/oidc?content=true"),
    ],
    ids=["files_list", "files_read", "exec_events", "credentials_document"],
)
async def test_an_error_answer_without_end_is_an_agent_error_after_about_the_cap(
    call: Callable[[AgentClient], Awaitable[Any]], answer: str
) -> None:
    async with LoopbackAgent(500, "application/json", flood(b"", b" ")).serving() as server:
        agent = AgentClient(server.url, "token", vm_id="vm-1")
        raised, peak = await _peak_while(call(agent))
        sent = server.sent.body_bytes
    assert isinstance(raised, AgentError)
    assert raised.message == f"{VM} answered {answer} with more than {MAX_ANSWER_BYTES} bytes"
    assert sent < FLOOD_BYTES // 2
    assert peak < 2 * MAX_ANSWER_BYTES


async def test_a_file_upload_answer_without_end_is_an_agent_error_after_about_the_cap() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"hello"

    async with LoopbackAgent(200, "application/json", flood(b"", b" ")).serving() as server:
        agent = AgentClient(server.url, "token", vm_id="vm-1")
        upload = agent.files_write("f", chunks(), archive=False, max_bytes=10)
        raised, peak = await _peak_while(upload)
        sent = server.sent.body_bytes
    assert isinstance(raised, AgentError)
    assert raised.message == f"{VM} answered PUT /files with more than {MAX_ANSWER_BYTES} bytes"
    assert sent < FLOOD_BYTES // 2
    assert peak < 2 * MAX_ANSWER_BYTES


@pytest.mark.parametrize(
    "body",
    [
        flood(b"id: 1\nevent: stdout\ndata: ", b"a"),  # one line without end
        flood(b"id: 1\nevent: stdout\n", b"data: " + b"a" * 1000 + b"\n"),  # an event's lines
    ],
    ids=["endless_line", "endless_event"],
)
async def test_an_event_past_the_cap_ends_the_event_stream_with_an_agent_error(
    body: Body,
) -> None:
    async with LoopbackAgent(200, "text/event-stream", body).serving() as server:
        agent = AgentClient(server.url, "token", vm_id="vm-1")
        raised, peak = await _peak_while(_events(agent, "e1"))
        sent = server.sent.body_bytes
    assert isinstance(raised, AgentError)
    assert raised.message == (
        f"{VM}: the event stream of exec e1 sent an event of more than {MAX_EVENT_BYTES} bytes"
    )
    assert sent < FLOOD_BYTES // 2
    assert peak < 3 * MAX_EVENT_BYTES  # the cap, and what sits in the transport's buffers


async def test_the_largest_output_events_an_agent_sends_pass_the_event_cap() -> None:
    # A read's worth of output, every byte a control character: 6 bytes each in JSON.
    chunk = bytes(range(1, 32)) * (READ_CHUNK_BYTES // 31)
    payload = OutputDecoder().decode(chunk)
    assert payload is not None
    stream = [
        sse_event(ExecEvent(id=1, type=EventType.STDOUT, payload=payload, size=0)),
        b": keepalive\n\n",
        b": keepalive\r\n\r\n",
        sse_event(ExecEvent(id=2, type=EventType.STDERR, payload=payload, size=0)),
        sse_event(ExecEvent(id=3, type=EventType.EXIT, payload={"exit_code": 0}, size=0)),
    ]
    assert len(stream[0]) > 5 * READ_CHUNK_BYTES
    async with LoopbackAgent(200, "text/event-stream", exactly(b"".join(stream))).serving() as s:
        events = await _events(AgentClient(s.url, "token", vm_id="vm-1"), "e1")
    assert events == [
        (1, "stdout", payload),
        (2, "stderr", payload),
        (3, "exit", {"exit_code": 0}),
    ]


async def test_the_largest_listing_an_agent_sends_passes_the_listing_cap() -> None:
    # MAX_LISTED entries, each named by 255 bytes that are not UTF-8: 6 bytes each in JSON.
    stat = os.stat(__file__)
    name = os.fsdecode(b"\xff" * 255)
    entries = [entry_json(name, stat, None) for _ in range(MAX_LISTED)]
    listing = {"path": "big", "type": "dir", "entries": entries, "truncated": True}
    body = json.dumps(listing).encode()
    assert len(body) > 3 * MAX_ANSWER_BYTES
    async with LoopbackAgent(200, "application/json", exactly(body)).serving() as server:
        answer = await AgentClient(server.url, "token", vm_id="vm-1").files_list("big")
    assert len(answer["entries"]) == MAX_LISTED
    # A name that is not UTF-8 is shown with U+FFFD for each such byte (a JSON answer holds text).
    assert answer["entries"][0]["name"] == "\ufffd" * 255


async def test_the_largest_credential_document_an_agent_sends_passes_the_document_cap() -> None:
    # A document as large as the agent takes, all two-byte characters: 3x in JSON, and the
    # answer carries it twice (parsed, and as its text).
    text = '{"token": "' + "é" * ((MAX_BODY_BYTES - 20) // 2) + '"}'
    content = text.encode()
    assert len(content) <= MAX_BODY_BYTES
    answer = {"provider": "oidc", "present": True, "bytes": len(content)}
    answer |= {"document": json.loads(text), "content": text}
    body = json.dumps(answer).encode()
    assert len(body) > MAX_ANSWER_BYTES
    async with LoopbackAgent(200, "application/json", exactly(body)).serving() as server:
        agent = AgentClient(server.url, "token", vm_id="vm-1")
        assert await agent.credentials_document("oidc") == content
        status = await agent.login_status("l1", content=True)
    assert status["document"] == json.loads(text)


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"null"])
async def test_an_event_that_is_not_a_json_object_ends_the_stream_with_an_agent_error(
    data: bytes,
) -> None:
    # What reads the events (a command's relay, a run's pump) takes each one's data as an
    # object: a guest's root that sends anything else ends the stream, it does not crash them.
    stream = b"id: 1\nevent: stdout\ndata: " + data + b"\n\n"
    async with LoopbackAgent(200, "text/event-stream", exactly(stream)).serving() as server:
        with pytest.raises(AgentError) as raised:
            await _events(AgentClient(server.url, "token", vm_id="vm-1"), "e1")
    assert raised.value.message == (
        f"{VM}: the event stream of exec e1 sent an event that is not a JSON object"
    )
