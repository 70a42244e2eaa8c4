"""Connections nobody authenticated, against a real agent subprocess on loopback: the agent
serves a bounded number at once and refuses the rest at once, rather than a thread for each."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from hearth_agent.server import MAX_CONNECTIONS

if TYPE_CHECKING:
    from conftest import AgentProcess

OPENED = MAX_CONNECTIONS + 36


def threads_of(pid: int) -> int:
    """How many threads the process runs."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_idle_connections_past_the_cap_are_refused_with_503_and_cost_no_thread(
    agent: AgentProcess,
) -> None:
    idle: list[socket.socket] = []
    try:
        # Each sends half a head and stalls, as a slow client (or an attacker) would.
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", agent.base_port()), timeout=5.0)
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Stalled: ")
            idle.append(sock)
        refused = []
        for _ in range(OPENED - MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", agent.base_port()), timeout=5.0)
            idle.append(sock)
            refused.append(sock.recv(65536))
        threads = threads_of(agent.pid)
    finally:
        for sock in idle:
            sock.close()

    # The main thread, the OIDC refresher and the one per connection served, never one more.
    assert threads <= MAX_CONNECTIONS + 2, f"{threads} threads for {OPENED} connections"
    for answer in refused:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert json.loads(body)["error"]["code"] == "too_many_connections"
    assert agent.log_text().count('"connections_refused"') == 1
    # Served again once the stalled connections' threads have seen them close.
    deadline = time.monotonic() + 5.0
    with httpx.Client(base_url=agent.base_url, timeout=10.0) as client:
        while (status := client.get("/health").status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert status == 200
