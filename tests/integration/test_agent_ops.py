"""Operator endpoints on a real agent subprocess: the guest clock, TCP probes, and restart."""

from __future__ import annotations

import base64
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import AgentLauncher, AgentProcess

EXIT_DEADLINE_S = 5.0
TCP_SYN_SENT = "02"  # connection state in /proc/net/tcp


def connections_awaiting_syn_ack(port: int) -> int:
    """How many sockets in this network namespace sit in SYN_SENT towards loopback ``port``."""
    count = 0
    lines = Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()
    for line in lines[1:]:
        fields = line.split()
        remote_port = int(fields[2].rpartition(":")[2], 16)
        count += remote_port == port and fields[3] == TCP_SYN_SENT
    return count


@pytest.fixture
def listening_port() -> Iterator[tuple[int, socket.socket]]:
    """A loopback port with a listener the test owns (it never accepts unless asked)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1], listener


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound (so nobody else takes it) but not listening: SYN gets RST."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so the kernel drops new SYNs unanswered."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:
                yield port
                return
    pytest.skip("the kernel kept completing handshakes beyond the listen backlog")


def probe(client: httpx.Client, body: object) -> httpx.Response:
    """POST /probe/tcp with a JSON body."""
    return client.post("/probe/tcp", json=body)


def error_of(response: httpx.Response) -> dict[str, str]:
    """The ``error`` object of a JSON error response."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return body["error"]  # type: ignore[no-any-return]


# --- GET /health -------------------------------------------------------------------------------


def test_health_reports_the_guest_clock_as_unix_time(anonymous_client: httpx.Client) -> None:
    before = time.time()
    body = anonymous_client.get("/health").json()
    after = time.time()

    assert isinstance(body["time"], float)
    assert before - 2.0 <= body["time"] <= after + 2.0


# --- POST /probe/tcp ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_probe_to_a_listening_port_connects_and_sends_nothing(
    agent_client: httpx.Client, listening_port: tuple[int, socket.socket], host: str
) -> None:
    port, listener = listening_port

    response = probe(agent_client, {"host": host, "port": port})

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "host": host,
        "port": port,
        "connected": True,
        "error": None,
        "elapsed_ms": body["elapsed_ms"],
    }
    assert isinstance(body["elapsed_ms"], float)
    assert 0.0 <= body["elapsed_ms"] < 1000.0
    listener.settimeout(5.0)
    accepted, _ = listener.accept()
    with accepted:
        accepted.settimeout(5.0)
        assert accepted.recv(1) == b""  # closed by the agent without a byte sent


def test_probe_to_an_ipv6_literal_connects(agent_client: httpx.Client) -> None:
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        port = listener.getsockname()[1]
        body = probe(agent_client, {"host": "::1", "port": port}).json()
    assert body["connected"] is True


def test_probe_to_a_closed_port_reports_refused(
    agent_client: httpx.Client, closed_port: int
) -> None:
    response = probe(agent_client, {"host": "127.0.0.1", "port": closed_port, "timeout_ms": 2000})

    assert response.status_code == 200
    body = response.json()
    assert body["connected"] is False
    assert body["error"] == "connection refused"
    assert body["elapsed_ms"] < 2000.0


def test_probe_without_an_answer_times_out_after_timeout_ms(
    agent_client: httpx.Client, unanswered_port: int
) -> None:
    body = probe(
        agent_client, {"host": "127.0.0.1", "port": unanswered_port, "timeout_ms": 300}
    ).json()

    assert body["connected"] is False
    assert body["error"] == "no answer within 300 ms"
    assert 250.0 <= body["elapsed_ms"] < 2000.0


def test_probe_to_an_unroutable_address_reports_the_error(agent_client: httpx.Client) -> None:
    # Linux refuses TCP to a multicast address outright (ENETUNREACH), whatever the network.
    body = probe(agent_client, {"host": "224.0.0.1", "port": 80}).json()

    assert body["connected"] is False
    assert body["error"] == os.strerror(errno.ENETUNREACH)


def test_probes_are_counted_by_result(
    agent_client: httpx.Client, listening_port: tuple[int, socket.socket], closed_port: int
) -> None:
    probe(agent_client, {"host": "127.0.0.1", "port": listening_port[0]})
    probe(agent_client, {"host": "127.0.0.1", "port": closed_port})
    probe(agent_client, {"host": "127.0.0.1", "port": closed_port})
    probe(agent_client, {"host": "127.0.0.1"})  # refused body: not a probe

    text = agent_client.get("/metrics").text

    assert 'hearth_agent_probes_total{result="connected"} 1' in text
    assert 'hearth_agent_probes_total{result="refused"} 2' in text
    assert 'hearth_agent_probes_total{result="timeout"} 0' in text
    assert 'hearth_agent_probes_total{result="error"} 0' in text
    assert (
        'hearth_agent_http_requests_total{route="/probe/tcp",method="POST",status="422"} 1' in text
    )


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"port": 80}, "host"),
        ({"host": 127, "port": 80}, "host"),
        ({"host": "", "port": 80}, "host"),
        ({"host": "a" * 254, "port": 80}, "host"),
        ({"host": "[::1]", "port": 80}, "host"),
        ({"host": "two words", "port": 80}, "host"),
        ({"host": "-leading.example", "port": 80}, "host"),
        ({"host": "example.com:80", "port": 80}, "host"),
        ({"host": "127.0.0.1"}, "port"),
        ({"host": "127.0.0.1", "port": 0}, "port"),
        ({"host": "127.0.0.1", "port": 65536}, "port"),
        ({"host": "127.0.0.1", "port": "80"}, "port"),
        ({"host": "127.0.0.1", "port": 80.0}, "port"),
        ({"host": "127.0.0.1", "port": True}, "port"),
        ({"host": "127.0.0.1", "port": 80, "timeout_ms": 0}, "timeout_ms"),
        ({"host": "127.0.0.1", "port": 80, "timeout_ms": 10001}, "timeout_ms"),
        ({"host": "127.0.0.1", "port": 80, "timeout_ms": "1000"}, "timeout_ms"),
        ({"host": "127.0.0.1", "port": 80, "timeout_ms": None}, "timeout_ms"),
        ({"host": "127.0.0.1", "port": 80, "timeout": 5}, "timeout"),
    ],
)
def test_probe_with_a_bad_body_returns_422_naming_the_field(
    agent_client: httpx.Client, body: dict[str, object], field_name: str
) -> None:
    response = probe(agent_client, body)

    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert f"'{field_name}'" in error["message"]


def test_probe_with_a_non_object_body_returns_422(agent_client: httpx.Client) -> None:
    response = probe(agent_client, ["127.0.0.1", 80])
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_request"


def test_probe_with_malformed_json_returns_400(agent_client: httpx.Client) -> None:
    response = agent_client.post("/probe/tcp", content=b'{"host": ')
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/probe/tcp", "/admin/restart"])
def test_operator_endpoints_require_the_token(
    agent: AgentProcess,
    anonymous_client: httpx.Client,
    listening_port: tuple[int, socket.socket],
    path: str,
) -> None:
    response = anonymous_client.post(path, json={"host": "127.0.0.1", "port": listening_port[0]})

    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert agent.process.poll() is None


def test_get_on_restart_returns_405_and_keeps_running(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    response = agent_client.get("/admin/restart")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert agent_client.get("/health").status_code == 200


# --- POST /admin/restart -----------------------------------------------------------------------


def new_claim_token() -> str:
    """A token in the accepted alphabet, different each call."""
    return base64.urlsafe_b64encode(os.urandom(33)).decode()


def test_restart_answers_202_then_exits_with_code_0(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    response = agent_client.post("/admin/restart")

    assert response.status_code == 202
    assert response.json() == {"restarting": True}
    assert agent.process.wait(timeout=EXIT_DEADLINE_S) == 0
    events = [record["event"] for record in agent.log_records()]
    assert events[-1] == "stopped"
    stopping = [r for r in agent.log_records() if r["event"] == "stopping"]
    assert [r["reason"] for r in stopping] == ["admin_restart"]
    requests = [r for r in agent.log_records() if r["event"] == "http_request"]
    assert requests[-1]["route"] == "/admin/restart"
    assert requests[-1]["status"] == 202


def test_a_claimed_agent_restarted_on_its_token_file_stays_claimed(
    agent_launcher: AgentLauncher,
) -> None:
    options = ("--token-file", str(agent_launcher.token_file), "--allow-claim", "--no-reseed")
    first = agent_launcher.start(*options)
    token = new_claim_token()
    with first.client() as anonymous:
        assert anonymous.post("/init", json={"token": token}).status_code == 200
    with first.client(token) as client:
        assert client.post("/admin/restart").status_code == 202
    assert first.process.wait(timeout=EXIT_DEADLINE_S) == 0

    second = agent_launcher.start(*options)  # what the supervisor does

    with second.client() as anonymous:
        assert anonymous.get("/health").json()["claimed"] is True
        assert anonymous.post("/init", json={"token": new_claim_token()}).status_code == 409
        assert anonymous.get("/version").status_code == 401
    with second.client(token) as client:
        assert client.get("/version").status_code == 200


def test_restart_lets_a_request_in_flight_finish_first(
    agent: AgentProcess, agent_client: httpx.Client, unanswered_port: int
) -> None:
    slow: list[httpx.Response] = []
    prober = threading.Thread(
        target=lambda: slow.append(
            probe(agent_client, {"host": "127.0.0.1", "port": unanswered_port, "timeout_ms": 1500})
        )
    )
    already_waiting = connections_awaiting_syn_ack(unanswered_port)  # the fixture's own filler
    prober.start()
    deadline = time.monotonic() + EXIT_DEADLINE_S
    while connections_awaiting_syn_ack(unanswered_port) <= already_waiting:
        assert time.monotonic() < deadline, "the probe never started connecting"
        time.sleep(0.01)

    with agent.client(agent.token) as client:
        assert client.post("/admin/restart").status_code == 202
    prober.join(timeout=EXIT_DEADLINE_S)

    assert len(slow) == 1
    assert slow[0].status_code == 200
    assert slow[0].json()["error"] == "no answer within 1500 ms"
    assert agent.process.wait(timeout=EXIT_DEADLINE_S) == 0


# --- POST /clock -------------------------------------------------------------------------------
# Setting the clock for real is tested in a VM (tests/vm/test_hibernate.py): this agent runs on
# the host, whose clock a test must not move.


@pytest.mark.parametrize(
    "body",
    [[], {}, {"time": "now"}, {"time": True}, {"time": -1}, {"time": 1.0, "extra": 1}],
)
def test_clock_refuses_a_body_that_is_not_one_positive_time(
    agent_client: httpx.Client, body: object
) -> None:
    response = agent_client.post("/clock", json=body)
    assert response.status_code == 422, response.text
    assert "time" in error_of(response)["message"]


def test_clock_needs_the_token(anonymous_client: httpx.Client) -> None:
    assert anonymous_client.post("/clock", json={"time": time.time()}).status_code == 401


def test_an_agent_outside_a_vm_leaves_the_host_clock_alone(agent_launcher: AgentLauncher) -> None:
    """``--no-reseed`` (how the in-process suites run agents on the host, whose resumed VMs get
    their clock set): the answer says the clock was not set, and how far off it was."""
    token = agent_launcher.write_token()
    options = ("--token-file", str(agent_launcher.token_file), "--no-reseed")
    agent = agent_launcher.start(*options, token=token)
    with agent.client(token) as client:
        response = client.post("/clock", json={"time": time.time()})  # (now: nothing to move)
    assert response.status_code == 200, response.text
    assert response.json()["clockSet"] is False
    assert abs(response.json()["offsetS"]) < 60
