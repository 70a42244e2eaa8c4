"""A chunked upload's trailer section (the header fields after its last chunk), against a real
agent process on loopback: bounded as a request's headers are, so that a client cannot keep
sending trailer lines (holding a thread and the agent's reads) past a small cap; a refused
upload keeps nothing."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from hearth_agent.bodies import MAX_TRAILER_BYTES, MAX_TRAILER_LINES

if TYPE_CHECKING:
    from conftest import AgentProcess

# Long enough for an agent that reads trailers without end to be caught holding the connection,
# short against the stream's socket timeout (120 s), after which even that agent answers.
ANSWER_WITHIN_S = 5.0


def upload_with_trailers(agent: AgentProcess, path: str, trailers: bytes) -> tuple[int, bytes]:
    """PUT ``hello`` chunked with ``trailers`` after its last chunk, keeping the connection open
    (the client may still be sending); the status and body of the answer."""
    head = (
        f"PUT /files?path={path} HTTP/1.1\r\nHost: agent\r\n"
        f"Authorization: Bearer {agent.token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", agent.base_port()), timeout=5.0) as sock:
        sock.sendall(head + b"5\r\nhello\r\n0\r\n" + trailers)
        sock.settimeout(ANSWER_WITHIN_S)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            raise AssertionError(
                f"no answer within {ANSWER_WITHIN_S} s: the agent is still reading trailers"
            ) from None
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def workspace_entries(agent: AgentProcess) -> list[Path]:
    return sorted((agent.home / "workspace").rglob("*"))


def test_trailer_lines_past_the_cap_answer_431_while_the_client_still_sends(
    agent: AgentProcess,
) -> None:
    endless = b"".join(b"X-T%d: v\r\n" % n for n in range(2000))  # and no empty line: it goes on

    status, body = upload_with_trailers(agent, "many", endless)

    assert status == 431
    assert json.loads(body)["error"] == {
        "code": "trailers_too_large",
        "message": f"the chunked body's trailers exceed {MAX_TRAILER_LINES} lines "
        f"or {MAX_TRAILER_BYTES} bytes",
    }
    assert workspace_entries(agent) == []


def test_trailers_larger_in_all_than_the_cap_answer_431(agent: AgentProcess) -> None:
    # Few lines, each of a size a header may have, but more than the cap together.
    line = b"X-Long: " + b"v" * 2000 + b"\r\n"
    lines = MAX_TRAILER_BYTES // len(line) + 1
    assert lines < MAX_TRAILER_LINES

    status, body = upload_with_trailers(agent, "long", line * lines)

    assert (status, json.loads(body)["error"]["code"]) == (431, "trailers_too_large")
    assert workspace_entries(agent) == []


def test_trailers_within_the_cap_are_skipped_and_the_upload_kept(agent: AgentProcess) -> None:
    lines = [b"X-T%d: v\r\n" % n for n in range(MAX_TRAILER_LINES)]

    status, body = upload_with_trailers(agent, "kept", b"".join(lines) + b"\r\n")

    assert status == 200, body
    assert (agent.home / "workspace" / "kept").read_bytes() == b"hello"
