"""The agent's exec endpoints against a real agent subprocess on loopback: SSE, resume, errors."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import AgentLauncher, AgentProcess


@dataclass(frozen=True)
class SseEvent:
    """One parsed text/event-stream event."""

    id: int | None
    type: str
    data: dict[str, Any]


@dataclass
class Collected:
    """What a client read from one or more event streams of an exec."""

    events: list[SseEvent] = field(default_factory=list)

    def stream(self, name: str) -> bytes:
        """The bytes of one output stream, decoded from its events."""
        return b"".join(decode(e.data) for e in self.events if e.type == name)

    @property
    def exit(self) -> dict[str, Any]:
        """The payload of the exit event."""
        (exit_event,) = [e for e in self.events if e.type == "exit"]
        return exit_event.data


def decode(data: dict[str, Any]) -> bytes:
    """An output payload's bytes."""
    if data.get("encoding") == "base64":
        return base64.b64decode(data["data"])
    return str(data["data"]).encode("utf-8")


def sse_events(response: httpx.Response) -> Iterator[SseEvent]:
    """Parse an event stream as it arrives (comments are skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                raw_id = fields.get("id")
                yield SseEvent(
                    id=int(raw_id) if raw_id is not None else None,
                    type=fields.get("event", "message"),
                    data=httpx.Response(200, content=fields["data"]).json(),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def start(client: httpx.Client, **body: Any) -> str:
    """POST /exec and return the exec id."""
    response = client.post("/exec", json=body)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert set(answer) == {"exec_id", "pid"}
    assert isinstance(answer["pid"], int)
    return str(answer["exec_id"])


def read_events(
    client: httpx.Client,
    exec_id: str,
    *,
    after: int | None = None,
    last_event_id: int | None = None,
    limit: int | None = None,
) -> Collected:
    """Read an exec's event stream to its end, or until ``limit`` events (then hang up)."""
    params = {"after": str(after)} if after is not None else {}
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    collected = Collected()
    with client.stream(
        "GET", f"/exec/{exec_id}/events", params=params, headers=headers
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream"
        assert "content-length" not in response.headers
        for event in sse_events(response):
            collected.events.append(event)
            if limit is not None and len(collected.events) >= limit:
                break
    return collected


def error_code(response: httpx.Response) -> str:
    """The ``error.code`` of a JSON error response."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


def process_gone(pid: int) -> bool:
    """Whether ``pid`` is gone (or a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def exec_leaders_alive(agent: AgentProcess) -> list[int]:
    """The exec leaders the agent logged as started that are still running."""
    started = [r.get("pid") for r in agent.log_records() if r.get("event") == "exec_started"]
    return [pid for pid in started if isinstance(pid, int) and not process_gone(pid)]


def stop_and_prove_clean(agent: AgentProcess) -> None:
    """If an exec still runs, stop the agent as its supervisor would (SIGTERM); then prove that
    no exec it started outlives it."""
    if exec_leaders_alive(agent) and agent.process.poll() is None:
        assert agent.stop(signal.SIGTERM) == 0
    assert not exec_leaders_alive(agent), "exec processes left behind"


@pytest.fixture
def agent(agent_launcher: AgentLauncher) -> Iterator[AgentProcess]:
    """A healthy agent with a token file; afterwards stopped, and proven to leave no exec."""
    started = agent_launcher.start_with_token()
    yield started
    stop_and_prove_clean(started)


# --- streaming ------------------------------------------------------------------------------


def test_exec_streams_stdout_stderr_and_one_exit_event(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["sh", "-c", "echo out; echo err >&2; exit 3"])

    collected = read_events(agent_client, exec_id)

    assert collected.stream("stdout") == b"out\n"
    assert collected.stream("stderr") == b"err\n"
    assert collected.events[-1].type == "exit"
    assert collected.exit["code"] == 3
    assert collected.exit["signal"] is None
    assert collected.exit["reason"] == "exited"
    ids = [e.id for e in collected.events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_events_arrive_while_the_process_still_runs(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["sh", "-c", "echo first; sleep 2; echo second"])
    started = time.monotonic()
    with agent_client.stream("GET", f"/exec/{exec_id}/events") as response:
        first = next(sse_events(response))
        arrived_after = time.monotonic() - started

    assert first.data == {"data": "first\n"}
    assert arrived_after < 1.5


def test_fifty_megabytes_stream_through_http_with_the_sha256_the_process_computed(
    agent_client: httpx.Client,
) -> None:
    code = (
        "import hashlib, os, sys\n"
        "digest = hashlib.sha256()\n"
        "for _ in range(200):\n"
        "    block = os.urandom(250_000)\n"
        "    digest.update(block)\n"
        "    sys.stdout.buffer.write(block)\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write(digest.hexdigest())\n"
    )
    exec_id = start(agent_client, cmd=[sys.executable, "-c", code])

    digest = hashlib.sha256()
    size = 0
    stderr = b""
    with agent_client.stream("GET", f"/exec/{exec_id}/events") as response:
        for event in sse_events(response):
            if event.type == "stdout":
                chunk = decode(event.data)
                digest.update(chunk)
                size += len(chunk)
            elif event.type == "stderr":
                stderr += decode(event.data)
            else:
                assert event.data["code"] == 0

    assert size == 50_000_000
    assert digest.hexdigest() == stderr.decode()


def test_a_reconnect_with_last_event_id_loses_nothing(agent_client: httpx.Client) -> None:
    script = "for i in $(seq 1 200); do echo line-$i; sleep 0.002; done"
    exec_id = start(agent_client, cmd=["bash", "-c", script])

    first = read_events(agent_client, exec_id, limit=20)  # then the client hangs up
    last_seen = first.events[-1].id
    assert last_seen is not None
    rest = read_events(agent_client, exec_id, after=0, last_event_id=last_seen)

    assert rest.events[0].id == last_seen + 1
    output = first.stream("stdout") + rest.stream("stdout")
    assert output.decode().split() == [f"line-{i}" for i in range(1, 201)]
    assert rest.exit["code"] == 0


def test_resuming_behind_what_was_acknowledged_answers_410(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["sh", "-c", "echo a; echo b >&2; echo c"])
    everything = read_events(agent_client, exec_id)
    last = everything.events[-1].id
    assert last is not None
    assert last >= 3

    assert read_events(agent_client, exec_id, after=last).events == []
    response = agent_client.get(f"/exec/{exec_id}/events", params={"after": "1"})
    assert response.status_code == 410
    assert error_code(response) == "exec_events_gone"


# --- status, stdin, kill --------------------------------------------------------------------


def test_status_then_kill_with_sigterm(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["sleep", "300"], timeout_s=60)

    running = agent_client.get(f"/exec/{exec_id}").json()
    assert running["status"] == "running"
    assert running["cmd"] == ["sleep", "300"]
    assert running["exit"] is None

    killed = agent_client.post(f"/exec/{exec_id}/kill", json={"signal": "SIGTERM"})
    assert killed.status_code == 200
    assert killed.json()["signalled"] is True
    exit_info = read_events(agent_client, exec_id).exit
    assert exit_info["signal"] == "SIGTERM"
    assert exit_info["reason"] == "killed"

    ended = agent_client.get(f"/exec/{exec_id}").json()
    assert ended["status"] == "exited"
    assert ended["exit"] == exit_info
    assert process_gone(ended["pid"])


def test_kill_without_a_body_sends_sigkill(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["sh", "-c", "trap '' TERM; sleep 300"])

    assert agent_client.post(f"/exec/{exec_id}/kill").status_code == 200
    assert read_events(agent_client, exec_id).exit["signal"] == "SIGKILL"


@pytest.mark.parametrize("ending", ["kill", "timeout"])
def test_processes_that_left_the_commands_group_end_with_it(
    agent_client: httpx.Client, ending: str
) -> None:
    # coreutils' timeout (like a shell's job control) moves into a process group of its own,
    # which a signal to the command's group misses: the command's session is signalled too.
    script = "timeout 300 sleep 301 & echo $!; wait"
    exec_id = start(
        agent_client, cmd=["sh", "-c", script], timeout_s=2 if ending == "timeout" else 60
    )
    head = read_events(agent_client, exec_id, limit=1)
    escaped = int(decode(head.events[0].data))
    leader = agent_client.get(f"/exec/{exec_id}").json()["pid"]
    # The shell names its child at the fork; timeout leaves the group a moment later, once it
    # runs (on a loaded machine that moment can come after this looks).
    deadline = time.monotonic() + 1
    while os.getpgid(escaped) == leader and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.getpgid(escaped) != leader, "timeout kept the command's group"
    if ending == "kill":
        assert agent_client.post(f"/exec/{exec_id}/kill").status_code == 200
    assert read_events(agent_client, exec_id).exit["reason"] == (
        "killed" if ending == "kill" else "timeout"
    )
    deadline = time.monotonic() + 5
    while not process_gone(escaped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(escaped), "a process of the command outlived it"


def test_a_signal_the_command_survives_does_not_make_it_killed(
    agent_client: httpx.Client,
) -> None:
    # The shell says when its trap is set: a SIGINT before that (a loaded machine) would end it.
    ignoring = "trap '' INT; echo trapped; sleep 1"
    exec_id = start(agent_client, cmd=["sh", "-c", ignoring])
    read_events(agent_client, exec_id, limit=1)
    assert agent_client.post(f"/exec/{exec_id}/kill", json={"signal": "SIGINT"}).status_code == 200
    assert read_events(agent_client, exec_id).exit == {
        **read_events(agent_client, exec_id).exit,
        "code": 0,
        "reason": "exited",
    }
    # Its timeout after such a signal is a timeout.
    ignoring = "trap '' INT; echo trapped; sleep 30"
    exec_id = start(agent_client, cmd=["sh", "-c", ignoring], timeout_s=1)
    read_events(agent_client, exec_id, limit=1)
    assert agent_client.post(f"/exec/{exec_id}/kill", json={"signal": "SIGINT"}).status_code == 200
    assert read_events(agent_client, exec_id).exit["reason"] == "timeout"


def test_stdin_round_trip_in_text_and_base64(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["cat"], stdin="one ", stdin_open=True)

    assert agent_client.post(f"/exec/{exec_id}/stdin", json={"data": "two "}).status_code == 200
    raw = base64.b64encode(b"\x00\xff three").decode()
    response = agent_client.post(
        f"/exec/{exec_id}/stdin", json={"data": raw, "encoding": "base64", "eof": True}
    )
    assert response.status_code == 200
    collected = read_events(agent_client, exec_id)

    assert collected.stream("stdout") == b"one two \x00\xff three"
    assert collected.exit["code"] == 0
    late = agent_client.post(f"/exec/{exec_id}/stdin", json={"data": "late"})
    assert late.status_code == 409
    assert error_code(late) == "stdin_closed"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/exec"),
        ("GET", "/exec/abc"),
        ("GET", "/exec/abc/events"),
        ("POST", "/exec/abc/stdin"),
        ("POST", "/exec/abc/kill"),
    ],
)
def test_exec_routes_need_the_token(anonymous_client: httpx.Client, method: str, path: str) -> None:
    response = anonymous_client.request(method, path, json={"cmd": ["true"]})

    assert response.status_code == 401
    assert error_code(response) == "unauthorized"


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({}, "cmd"),
        ({"cmd": []}, "cmd"),
        ({"cmd": "ls -l"}, "cmd"),
        ({"cmd": ["ls", 1]}, "cmd"),
        ({"cmd": [""]}, "cmd"),
        ({"cmd": ["ls"], "shell": True}, "shell"),
        ({"cmd": ["ls"], "timeout_s": "5"}, "timeout_s"),
        ({"cmd": ["ls"], "timeout_s": 0}, "timeout_s"),
        ({"cmd": ["ls"], "timeout_s": 10**9}, "timeout_s"),
        ({"cmd": ["ls"], "cwd": "/no/such/dir"}, "cwd"),
        ({"cmd": ["ls"], "env": {"A": 1}}, "env"),
        ({"cmd": ["ls"], "env": ["A=1"]}, "env"),
        ({"cmd": ["ls"], "stdin": 5}, "stdin"),
        ({"cmd": ["ls"], "stdin_open": "yes"}, "stdin_open"),
        (["ls"], "object"),
    ],
)
def test_bad_exec_bodies_answer_422_naming_the_field(
    agent_client: httpx.Client, body: object, field_name: str
) -> None:
    response = agent_client.post("/exec", json=body)

    assert response.status_code == 422
    assert error_code(response) == "invalid_request"
    assert field_name in response.json()["error"]["message"]


def test_a_body_that_is_not_json_answers_400(agent_client: httpx.Client) -> None:
    response = agent_client.post("/exec", content=b"{cmd")

    assert response.status_code == 400
    assert error_code(response) == "malformed_json"


def test_a_program_that_does_not_exist_answers_422(agent_client: httpx.Client) -> None:
    response = agent_client.post("/exec", json={"cmd": ["no-such-program-here"]})

    assert response.status_code == 422
    assert error_code(response) == "exec_start_failed"
    assert "no-such-program-here" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("GET", "/events", None),
        ("POST", "/stdin", {"data": "x"}),
        ("POST", "/kill", {}),
    ],
)
def test_an_unknown_exec_answers_404(
    agent_client: httpx.Client, method: str, suffix: str, body: object
) -> None:
    response = agent_client.request(method, f"/exec/0123abcd{suffix}", json=body)

    assert response.status_code == 404
    assert error_code(response) == "exec_not_found"


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"after": "-1"}, {}), ({"after": "x"}, {}), ({}, {"Last-Event-ID": "abc"})],
)
def test_a_bad_resume_point_answers_422(
    agent_client: httpx.Client, params: dict[str, str], headers: dict[str, str]
) -> None:
    exec_id = start(agent_client, cmd=["true"])
    response = agent_client.get(f"/exec/{exec_id}/events", params=params, headers=headers)

    assert response.status_code == 422


def test_a_bad_stdin_or_kill_body_answers_422(agent_client: httpx.Client) -> None:
    exec_id = start(agent_client, cmd=["sleep", "300"], stdin_open=True)

    for body in ({"data": "!!", "encoding": "base64"}, {"data": 1}, {}, {"data": "x", "x": 1}):
        response = agent_client.post(f"/exec/{exec_id}/stdin", json=body)
        assert response.status_code == 422, body
    response = agent_client.post(f"/exec/{exec_id}/kill", json={"signal": "SIGSTOP"})
    assert response.status_code == 422
    assert "signal" in response.json()["error"]["message"]


def test_past_the_cap_a_new_exec_answers_429(agent_launcher: AgentLauncher) -> None:
    token = agent_launcher.write_token()
    agent = agent_launcher.start(
        "--token-file", str(agent_launcher.token_file), "--max-execs", "2", token=token
    )
    try:
        with agent.client(token) as client:
            first = start(client, cmd=["sleep", "300"])
            start(client, cmd=["sleep", "300"])
            refused = client.post("/exec", json={"cmd": ["true"]})
            assert refused.status_code == 429
            assert error_code(refused) == "too_many_execs"

            client.post(f"/exec/{first}/kill")
            read_events(client, first)
            assert client.post("/exec", json={"cmd": ["true"]}).status_code == 201
    finally:
        stop_and_prove_clean(agent)


def test_stopping_the_agent_kills_every_running_exec(agent: AgentProcess) -> None:
    with agent.client(agent.token) as client:
        exec_id = start(client, cmd=["bash", "-c", "sleep 300 & echo $!; wait"])
        child = int(read_events(client, exec_id, limit=1).stream("stdout"))
        leader = client.get(f"/exec/{exec_id}").json()["pid"]

    assert agent.stop(signal.SIGTERM) == 0
    assert process_gone(leader)
    assert process_gone(child)
    ended = [r for r in agent.log_records() if r.get("event") == "exec_ended"]
    assert [(r["exec_id"], r["reason"]) for r in ended] == [(exec_id, "killed")]


def test_killing_an_agent_as_a_vm_ends_what_its_execs_run(agent: AgentProcess) -> None:
    # The fake backends' VM death (AgentProcess.kill): on the host an exec's session would
    # outlive its SIGKILLed agent, where a real VM's end takes everything with it.
    with agent.client(agent.token) as client:
        exec_id = start(client, cmd=["bash", "-c", "sleep 300 & echo $!; wait"])
        child = int(read_events(client, exec_id, limit=1).stream("stdout"))
        leader = client.get(f"/exec/{exec_id}").json()["pid"]

    agent.kill()
    deadline = time.monotonic() + 2.0
    while not (process_gone(leader) and process_gone(child)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process_gone(leader)
    assert process_gone(child)


def test_execs_run_in_the_workspace_which_the_agent_creates_0700(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    workspace = agent.home / "workspace"
    exec_id = start(agent_client, cmd=["pwd"])

    assert read_events(agent_client, exec_id).stream("stdout").decode().strip() == str(workspace)
    assert workspace.stat().st_mode & 0o777 == 0o700
