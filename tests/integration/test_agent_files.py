"""The agent's file endpoints over HTTP, against a real agent process on loopback: the token,
streamed bodies (Content-Length and chunked), refusals that reach a client still sending, and an
upload cut off mid-body leaving nothing."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from conftest import AgentProcess

MIB = 1024 * 1024


def workspace(agent: AgentProcess) -> Path:
    return agent.home / "workspace"


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_file_routes_need_the_token(anonymous_client: httpx.Client) -> None:
    for method, url in (
        ("PUT", "/files?path=x"),
        ("GET", "/files?path=x"),
        ("DELETE", "/files?path=x"),
        ("GET", "/files/list"),
    ):
        answer = anonymous_client.request(method, url, content=b"x" if method == "PUT" else None)
        assert answer.status_code == 401, (method, url)


def test_a_chunked_upload_is_written_and_read_back_with_its_length(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    blocks = [hashlib.sha256(bytes([i])).digest() * 4096 for i in range(64)]  # 8 MiB

    def chunks() -> Iterator[bytes]:
        yield from blocks

    written = agent_client.put("/files", params={"path": "d/f.bin"}, content=chunks())
    assert written.status_code == 200, written.text
    data = b"".join(blocks)
    assert written.json()["sha256"] == hashlib.sha256(data).hexdigest()
    read = agent_client.get("/files", params={"path": "d/f.bin"})
    assert read.headers["content-length"] == str(len(data))
    assert read.headers["x-hearth-file-type"] == "file"
    assert read.content == data
    assert (workspace(agent) / "d" / "f.bin").read_bytes() == data


def test_a_refusal_before_the_end_of_a_large_body_reaches_the_client(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    (workspace(agent) / "dir").mkdir()

    def fifty_megabytes() -> Iterator[bytes]:
        for _ in range(50):
            yield bytes(MIB)

    for path, status, code in (
        ("../escape", 422, "path_outside_workspace"),
        ("dir", 409, "path_conflict"),
    ):
        answer = agent_client.put(
            "/files", params={"path": path, "max_bytes": str(64 * MIB)}, content=fifty_megabytes()
        )
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code
    over = agent_client.put(
        "/files", params={"path": "big", "max_bytes": str(MIB)}, content=bytes(2 * MIB)
    )
    assert over.json()["error"]["code"] == "file_too_large"
    assert leftovers(workspace(agent)) == ["dir"]


def test_an_upload_cut_off_mid_body_leaves_nothing(agent: AgentProcess) -> None:
    head = (
        "PUT /files?path=cut/off.bin HTTP/1.1\r\nHost: agent\r\n"
        f"Authorization: Bearer {agent.token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n%s\r\n" % (MIB, bytes(MIB))
    with socket.create_connection(("127.0.0.1", agent.base_port())) as sock:
        sock.sendall(head + chunk * 3 + b"%x\r\n" % MIB + bytes(1000))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        # The refusal (400) is logged, or writing it fails on the closed connection; both after
        # the agent removed what it had staged.
        records = agent.log_records()
        if any(
            r.get("event") == "connection_error"
            or (r.get("event") == "http_request" and r.get("status") == 400)
            for r in records
        ):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the agent did not refuse the cut-off upload:\n{agent.log_text()}")
    assert leftovers(workspace(agent)) == []


def test_a_directory_comes_as_a_tar_and_the_listing_as_json(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    (workspace(agent) / "a").mkdir()
    (workspace(agent) / "a" / "f").write_text("f")
    tar = agent_client.get("/files", params={"path": "a"})
    assert tar.headers["content-type"] == "application/x-tar"
    assert tar.headers["x-hearth-file-type"] == "dir"
    assert b"f" in tar.content
    listed = agent_client.get("/files/list", params={"path": "a"}).json()
    assert listed["entries"][0]["name"] == "f"
