"""An upload cut by the agent's own death (a crash, a restart) against real agent processes on
loopback: what it staged is not left in the workspace for good; the next agent removes it where
it meets it, and still shows the user's own files that merely look like staging entries."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentLauncher, AgentProcess

MIB = 1024 * 1024
PREFIX = ".hearth-upload-"


def staged(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(PREFIX))


def start_upload(agent: AgentProcess, path: str) -> socket.socket:
    """A chunked upload to ``path`` with 2 MiB sent and more to come."""
    sock = socket.create_connection(("127.0.0.1", agent.base_port()))
    sock.sendall(
        (
            f"PUT /files?path={path} HTTP/1.1\r\nHost: agent\r\n"
            f"Authorization: Bearer {agent.token}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + (b"%x\r\n%s\r\n" % (MIB, bytes(MIB))) * 2
    )
    return sock


def wait_for_staged(directory: Path) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if found := staged(directory):
            return found
        time.sleep(0.02)
    raise AssertionError(f"nothing was staged in {directory}")


def test_what_an_agent_killed_mid_upload_staged_is_removed_by_the_next_agent(
    agent_launcher: AgentLauncher,
) -> None:
    first = agent_launcher.start_with_token()
    workspace = first.home / "workspace"
    with start_upload(first, "incoming/big.bin"):
        # Staged in the deepest directory on the path that exists: the workspace.
        [left] = wait_for_staged(workspace)
        first.kill()
    (workspace / ".hearth-upload-notes").write_text("the user's")
    assert staged(workspace) == sorted([left, ".hearth-upload-notes"])

    second = agent_launcher.start("--token-file", str(first.token_file), token=first.token)
    with second.client(second.token) as client:
        listed = client.get("/files/list", params={"path": "."})
        assert listed.status_code == 200, listed.text
        assert [entry["name"] for entry in listed.json()["entries"]] == [".hearth-upload-notes"]
    assert staged(workspace) == [".hearth-upload-notes"]
    assert not (workspace / "incoming").exists()


def test_an_upload_in_flight_is_hidden_from_a_listing_and_completes(agent: AgentProcess) -> None:
    workspace = agent.home / "workspace"
    with agent.client(agent.token) as client, start_upload(agent, "f.bin") as sock:
        [in_flight] = wait_for_staged(workspace)
        assert client.get("/files/list", params={"path": "."}).json()["entries"] == []
        assert client.put("/files", params={"path": "g"}, content=b"g").status_code == 200
        assert staged(workspace) == [in_flight]
        sock.sendall(b"0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        listed = client.get("/files/list", params={"path": "."}).json()["entries"]
    assert [(entry["name"], entry["size"]) for entry in listed] == [("f.bin", 2 * MIB), ("g", 1)]
    assert staged(workspace) == []
