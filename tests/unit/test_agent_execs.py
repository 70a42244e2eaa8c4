"""The agent's exec engine with real processes: output order, bytes, exits, groups, backpressure."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hearth_agent.errors import (
    ExecEventsGone,
    ExecNotFound,
    ExecStartFailed,
    InvalidInput,
    StdinClosed,
    TooManyExecs,
)
from hearth_agent.exec_events import EVENT_OVERHEAD_BYTES, EventType, OutputDecoder, payload_bytes
from hearth_agent.exec_pump import DRAIN_GRACE_S, READ_CHUNK_BYTES
from hearth_agent.execs import Exec, ExecLimits, ExecRegistry, ExecSpec
from hearth_agent.log import JsonLogger

PYTHON = sys.executable
WAIT_S = 10.0


@dataclass
class Output:
    """Everything an exec reported, as read by one follower."""

    stdout: bytes
    stderr: bytes
    exit: dict[str, object]
    ids: list[int]
    types: list[EventType]


def collect(running: Exec, after: int = 0) -> Output:
    """Follow an exec's events to its exit and join its output per stream."""
    out = Output(stdout=b"", stderr=b"", exit={}, ids=[], types=[])
    streams = {EventType.STDOUT: bytearray(), EventType.STDERR: bytearray()}
    for event in running.log.follow(after, keepalive_s=WAIT_S):
        assert event is not None, "no event for the keepalive period"
        out.ids.append(event.id)
        out.types.append(event.type)
        if event.type is EventType.EXIT:
            out.exit = event.payload
        else:
            streams[event.type] += payload_bytes(event.payload)
    out.stdout, out.stderr = bytes(streams[EventType.STDOUT]), bytes(streams[EventType.STDERR])
    return out


def python(code: str) -> tuple[str, ...]:
    """A command running ``code`` in the test's Python."""
    return (PYTHON, "-c", code)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` is no longer a live process (gone, or a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_until(condition: object, timeout_s: float = WAIT_S) -> bool:
    """Poll ``condition()`` until it holds or ``timeout_s`` passes."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def make_registry(tmp_path: Path, **limits: float) -> ExecRegistry:
    """A registry whose workspace and home are under ``tmp_path``."""
    workspace = tmp_path / "workspace"
    workspace.mkdir(mode=0o700, exist_ok=True)
    return ExecRegistry(
        workspace=workspace,
        home=tmp_path,
        logger=JsonLogger(stream=io.StringIO()),
        limits=ExecLimits(**limits),  # type: ignore[arg-type]
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ExecRegistry]:
    """A registry with the default limits; afterwards, no exec's group is left running."""
    execs = make_registry(tmp_path)
    try:
        yield execs
    finally:
        execs.close()
        assert execs.running() == []


# --- output ---------------------------------------------------------------------------------


def test_stdout_and_stderr_each_arrive_in_order(registry: ExecRegistry) -> None:
    script = 'for i in $(seq 1 3000); do echo "out $i"; echo "err $i" >&2; done'
    out = collect(registry.start(ExecSpec(cmd=("bash", "-c", script))))

    assert out.stdout.decode().splitlines() == [f"out {i}" for i in range(1, 3001)]
    assert out.stderr.decode().splitlines() == [f"err {i}" for i in range(1, 3001)]
    assert out.ids == list(range(1, len(out.ids) + 1))
    assert out.types.count(EventType.EXIT) == 1
    assert out.types[-1] is EventType.EXIT
    assert out.exit["code"] == 0


def test_fifty_megabytes_of_binary_output_arrive_with_the_sha256_the_process_computed(
    registry: ExecRegistry,
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
    running = registry.start(ExecSpec(cmd=python(code)))
    out = collect(running)

    assert len(out.stdout) == 50_000_000
    assert hashlib.sha256(out.stdout).hexdigest() == out.stderr.decode()
    assert out.exit["code"] == 0
    # Coalesced: 64 KiB reads, not one event per write or per line.
    assert len(out.ids) < 50_000_000 // (READ_CHUNK_BYTES // 2)


def test_a_character_split_across_reads_decodes_as_text(registry: ExecRegistry) -> None:
    code = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "for part in (b'caf\\xc3', b'\\xa9 \\xe2\\x82', b'\\xac \\xf0\\x9f', b'\\x94\\xa5\\n'):\n"
        "    out.write(part); out.flush(); time.sleep(0.05)\n"
    )
    running = registry.start(ExecSpec(cmd=python(code)))
    out = collect(running)
    payloads = [e.payload for e in running.log.read(0) if e.type is EventType.STDOUT]

    assert out.stdout.decode() == "café € 🔥\n"
    assert all("encoding" not in p for p in payloads)
    assert "".join(str(p["data"]) for p in payloads) == "café € 🔥\n"


def test_bytes_that_are_not_utf8_arrive_as_base64_and_exact(registry: ExecRegistry) -> None:
    code = (
        "import sys; sys.stdout.buffer.write(b'ok\\n\\xff\\xfe\\x00raw'); "
        "sys.stderr.buffer.write(b'\\xe2\\x82')"
    )
    running = registry.start(ExecSpec(cmd=python(code)))
    out = collect(running)
    events = running.log.read(0)

    assert out.stdout == b"ok\n\xff\xfe\x00raw"
    assert out.stderr == b"\xe2\x82"  # an incomplete character at the end of the stream
    assert any(e.payload.get("encoding") == "base64" for e in events if e.type is EventType.STDOUT)
    assert [e.payload for e in events if e.type is EventType.STDERR] == [
        {"data": "4oI=", "encoding": "base64"}
    ]


@pytest.mark.parametrize("split", range(1, 12))
def test_decoder_gives_back_every_byte_whatever_the_split(split: int) -> None:
    data = "aé€🔥z".encode()
    decoder = OutputDecoder()
    payloads = [decoder.decode(data[:split]), decoder.decode(data[split:]), decoder.flush()]

    present = [p for p in payloads if p is not None]
    assert b"".join(payload_bytes(p) for p in present) == data
    assert all("encoding" not in p for p in present)


# --- exits, signals, timeout, kill ----------------------------------------------------------


def test_exit_code_is_reported(registry: ExecRegistry) -> None:
    out = collect(registry.start(ExecSpec(cmd=("sh", "-c", "exit 7"))))

    assert out.exit["code"] == 7
    assert out.exit["signal"] is None
    assert out.exit["reason"] == "exited"
    assert isinstance(out.exit["duration_ms"], int)


def test_death_by_signal_is_reported_by_name(registry: ExecRegistry) -> None:
    out = collect(registry.start(ExecSpec(cmd=("bash", "-c", "kill -SEGV $$"))))

    assert out.exit == {**out.exit, "code": None, "signal": "SIGSEGV", "reason": "exited"}


def test_timeout_kills_the_whole_group_including_a_grandchild_that_ignores_signals(
    registry: ExecRegistry,
) -> None:
    script = (
        "trap '' TERM INT HUP; bash -c \"trap '' TERM INT HUP; sleep 300 & echo \\$!; wait\" & wait"
    )
    started = time.monotonic()
    running = registry.start(ExecSpec(cmd=("bash", "-c", script), timeout_s=1.0))
    out = collect(running)

    grandchild = int(out.stdout.decode().split()[0])
    assert out.exit["reason"] == "timeout"
    assert out.exit["signal"] == "SIGKILL"
    assert 1.0 <= time.monotonic() - started < 5.0
    assert wait_until(lambda: process_gone(grandchild), 2.0)
    assert process_gone(running.pid)


def test_kill_ends_the_group_with_sigkill_by_default(registry: ExecRegistry) -> None:
    running = registry.start(
        ExecSpec(cmd=("bash", "-c", "sleep 300 & echo $!; trap '' TERM; wait"))
    )
    first = running.log.read(0, wait_s=WAIT_S)
    child = int(payload_bytes(first[0].payload).decode())

    assert running.kill() is True
    out = collect(running)
    assert out.exit["reason"] == "killed"
    assert out.exit["signal"] == "SIGKILL"
    assert wait_until(lambda: process_gone(child), 2.0)
    assert running.kill() is False  # already ended: nothing to signal


def test_kill_with_sigterm_lets_the_process_handle_it(registry: ExecRegistry) -> None:
    running = registry.start(
        ExecSpec(cmd=("bash", "-c", "trap 'echo bye; exit 5' TERM; echo up; sleep 300 & wait"))
    )
    assert running.log.read(0, wait_s=WAIT_S)

    running.kill(signal.SIGTERM)
    out = collect(running)
    assert out.stdout == b"up\nbye\n"
    assert out.exit["code"] == 5
    assert out.exit["reason"] == "killed"


def test_a_kill_signals_each_process_once(registry: ExecRegistry) -> None:
    # The group's signal and the sweep of the session for processes that left it must not both
    # reach one process: a program that handles SIGTERM would run its handler twice.
    script = (
        "import signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda *_: got.append(1))\n"
        "print('up', flush=True)\n"
        "while not got: time.sleep(0.01)\n"
        "time.sleep(1)\n"
        "print(len(got), flush=True)\n"
        "sys.exit(5)\n"
    )
    running = registry.start(ExecSpec(cmd=(sys.executable, "-c", script)))
    assert running.log.read(0, wait_s=WAIT_S)

    assert running.kill(signal.SIGTERM) is True
    out = collect(running)
    assert out.stdout == b"up\n1\n"
    assert out.exit["code"] == 5


def test_what_the_leader_leaves_running_in_its_group_is_killed_when_it_exits(
    registry: ExecRegistry,
) -> None:
    started = time.monotonic()
    out = collect(registry.start(ExecSpec(cmd=("bash", "-c", "sleep 300 & echo $!"))))

    assert out.exit["code"] == 0
    assert time.monotonic() - started < 3.0
    assert wait_until(lambda: process_gone(int(out.stdout)), 2.0)


def test_what_the_leader_leaves_in_another_group_of_its_session_is_killed_when_it_exits(
    registry: ExecRegistry,
) -> None:
    # timeout(1) puts itself and its command in a group of their own; here they write on.
    running = registry.start(
        ExecSpec(
            cmd=(
                "bash",
                "-c",
                "timeout 100 sh -c 'while :; do echo x; sleep 0.2; done' & echo $!; sleep 0.3",
            ),
        )
    )
    pid = int(running.log.read(0, wait_s=WAIT_S)[0].payload["data"].split()[0])

    ended = running.wait(DRAIN_GRACE_S + 3.0)
    assert ended is not None, "the exec still runs after its leader ended"
    assert ended.code == 0
    assert wait_until(lambda: process_gone(pid), 2.0)


def test_output_held_open_by_a_process_of_its_own_session_does_not_hold_back_the_exit(
    registry: ExecRegistry,
) -> None:
    # A process that made itself a session escapes the exec; its output (it writes on and on)
    # is read for DRAIN_GRACE_S after the leader ended, then let go.
    writer = (
        "import os, time; os.setsid(); print(os.getpid(), flush=True)\n"
        "while True: print('x', flush=True); time.sleep(0.1)"
    )
    running = registry.start(ExecSpec(cmd=("bash", "-c", f'{PYTHON} -c "{writer}" & sleep 0.3')))
    pid = int(running.log.read(0, wait_s=WAIT_S)[0].payload["data"].split()[0])
    try:
        ended = running.wait(DRAIN_GRACE_S + 3.0)
        assert ended is not None, "the exec's exit is held back by output it does not own"
        assert ended.code == 0
    finally:
        os.kill(pid, signal.SIGKILL)


# --- stdin, cwd, env ------------------------------------------------------------------------


def test_stdin_round_trip_text_and_bytes_then_eof(registry: ExecRegistry) -> None:
    running = registry.start(ExecSpec(cmd=("cat",), stdin=b"first ", stdin_open=True))
    running.write_stdin(b"second \xff\x00 ")
    running.write_stdin("third €".encode(), eof=True)

    out = collect(running)
    assert out.stdout == b"first second \xff\x00 third \xe2\x82\xac"
    assert out.exit["code"] == 0
    with pytest.raises(StdinClosed):
        running.write_stdin(b"late")


def test_initial_stdin_alone_is_closed_after_it(registry: ExecRegistry) -> None:
    out = collect(registry.start(ExecSpec(cmd=("wc", "-c"), stdin=b"12345")))

    assert out.stdout.strip() == b"5"


def test_stdin_is_closed_unless_asked_for(registry: ExecRegistry) -> None:
    running = registry.start(ExecSpec(cmd=("cat",)))
    out = collect(running)

    assert out.stdout == b""
    with pytest.raises(StdinClosed):
        running.write_stdin(b"x")


def test_exec_runs_in_the_workspace_with_a_clean_environment(
    registry: ExecRegistry, tmp_path: Path
) -> None:
    out = collect(registry.start(ExecSpec(cmd=("sh", "-c", "pwd; env"), env={"FOO": "bar"})))
    cwd, *env_lines = out.stdout.decode().splitlines()
    env = dict(line.split("=", 1) for line in env_lines)

    assert cwd == str(tmp_path / "workspace")
    assert env["FOO"] == "bar"
    assert env["HOME"] == str(tmp_path)
    assert env["LANG"] == "C.UTF-8"
    assert "PYTEST_CURRENT_TEST" not in env


def test_a_relative_cwd_is_under_the_workspace(registry: ExecRegistry, tmp_path: Path) -> None:
    (tmp_path / "workspace" / "proj").mkdir()
    out = collect(registry.start(ExecSpec(cmd=("pwd",), cwd=Path("proj"))))

    assert out.stdout.decode().strip() == str(tmp_path / "workspace" / "proj")


def test_bad_specs_are_refused_before_anything_runs(registry: ExecRegistry) -> None:
    with pytest.raises(InvalidInput, match="cwd"):
        registry.start(ExecSpec(cmd=("true",), cwd=Path("/no/such/dir")))
    with pytest.raises(InvalidInput, match="timeout_s"):
        registry.start(ExecSpec(cmd=("true",), timeout_s=10**9))
    with pytest.raises(ExecStartFailed, match="no-such-program"):
        registry.start(ExecSpec(cmd=("no-such-program",)))
    with pytest.raises(ExecNotFound):
        registry.get("nope")


# --- concurrency, cap, retention, shutdown --------------------------------------------------


def test_ten_concurrent_execs_each_get_their_own_output(registry: ExecRegistry) -> None:
    started = time.monotonic()
    execs = [
        registry.start(ExecSpec(cmd=("sh", "-c", f"sleep 0.5; echo exec-{n}"))) for n in range(10)
    ]
    outputs = [collect(running) for running in execs]

    assert [o.stdout for o in outputs] == [f"exec-{n}\n".encode() for n in range(10)]
    assert time.monotonic() - started < 4.0  # they ran side by side, not one after another


def test_the_cap_on_running_execs_answers_429(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, max_running=2)
    try:
        first = registry.start(ExecSpec(cmd=("sleep", "300")))
        registry.start(ExecSpec(cmd=("sleep", "300")))
        with pytest.raises(TooManyExecs) as refused:
            registry.start(ExecSpec(cmd=("true",)))
        assert refused.value.http_status == 429
        assert "2 execs are running" in refused.value.message

        first.kill()
        first.wait(WAIT_S)
        assert registry.start(ExecSpec(cmd=("true",))).wait(WAIT_S) is not None
    finally:
        registry.close()


def test_a_callers_own_cap_is_held_and_cannot_raise_the_agents(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, max_running=3)
    try:
        registry.start(ExecSpec(cmd=("sleep", "300"), max_running=1))
        with pytest.raises(TooManyExecs, match="1 execs are running"):
            registry.start(ExecSpec(cmd=("true",), max_running=1))
        registry.start(ExecSpec(cmd=("sleep", "300"), max_running=2))
        with pytest.raises(TooManyExecs, match="2 execs are running"):
            registry.start(ExecSpec(cmd=("true",), max_running=2))
        registry.start(ExecSpec(cmd=("sleep", "300")))
        with pytest.raises(TooManyExecs, match="3 execs are running"):
            registry.start(ExecSpec(cmd=("true",), max_running=100))  # the agent's 3 holds
    finally:
        registry.close()


def test_ended_execs_are_forgotten_past_the_count(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, keep_ended=2)
    try:
        ended = []
        for _ in range(3):  # one after another, so they end in this order
            ended.append(registry.start(ExecSpec(cmd=("true",))))
            ended[-1].wait(WAIT_S)

        with pytest.raises(ExecNotFound):
            registry.get(ended[0].exec_id)
        assert registry.get(ended[2].exec_id).exit is not None
    finally:
        registry.close()


def ended_true(registry: ExecRegistry) -> Exec:
    """``true`` started and ended (so execs made one after another end in that order)."""
    running = registry.start(ExecSpec(cmd=("true",)))
    running.wait(WAIT_S)
    return running


def test_an_ended_exec_whose_exit_nobody_read_outlives_the_retention_time(
    tmp_path: Path,
) -> None:
    # A run's controller may be away longer than the retention time (an upgrade, an outage);
    # coming back, it must still find how the run ended.
    registry = make_registry(tmp_path, keep_ended_s=0.0)
    try:
        unread, read = ended_true(registry), ended_true(registry)
        collect(read)  # a follower wrote its exit event out
        acknowledged = ended_true(registry)
        acknowledged.log.read(acknowledged.log.last_id)  # a reader acknowledged its exit
        time.sleep(0.01)

        assert registry.get(unread.exec_id).exit is not None
        for gone in (read, acknowledged):
            with pytest.raises(ExecNotFound):
                registry.get(gone.exec_id)
    finally:
        registry.close()


def test_past_the_count_execs_whose_exit_was_read_go_before_unread_ones(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, keep_ended=2)
    try:
        unread, read = ended_true(registry), ended_true(registry)
        collect(read)
        newest = ended_true(registry)

        with pytest.raises(ExecNotFound):
            registry.get(read.exec_id)
        assert registry.get(unread.exec_id).exit is not None
        assert registry.get(newest.exec_id).exit is not None
    finally:
        registry.close()


def test_shutdown_kills_every_running_group_and_refuses_new_execs(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    execs = [registry.start(ExecSpec(cmd=("sleep", "300"))) for _ in range(3)]

    registry.close()

    assert [e.exit.reason.value if e.exit else None for e in execs] == ["killed"] * 3
    assert all(process_gone(e.pid) for e in execs)
    with pytest.raises(TooManyExecs, match="shutting down"):
        registry.start(ExecSpec(cmd=("true",)))


def test_an_exec_started_while_the_registry_closes_is_killed_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    execs = make_registry(tmp_path)
    started: list[Exec] = []

    class ClosedMidStart(Exec):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            started.append(self)
            execs.close()  # between the start's check and its registration, as a shutdown may

    monkeypatch.setattr("hearth_agent.execs.Exec", ClosedMidStart)
    with pytest.raises(TooManyExecs, match="shutting down"):
        execs.start(ExecSpec(cmd=("sleep", "300")))

    assert started[0].wait(WAIT_S) is not None
    assert process_gone(started[0].pid)
    assert execs.running() == []


# --- backpressure and resume ----------------------------------------------------------------

WRITER = (
    "import os, sys\n"
    "progress = open('progress', 'w')\n"
    "for n in range(1, {blocks} + 1):\n"
    "    sys.stdout.buffer.write(bytes([n % 256]) * 65536); sys.stdout.flush()\n"
    "    progress.seek(0); progress.write(str(n)); progress.flush()\n"
)


def test_backpressure_holds_the_process_until_a_reader_catches_up(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, buffer_bytes=1024 * 1024, replay_bytes=256 * 1024)
    progress = tmp_path / "workspace" / "progress"
    try:
        running = registry.start(ExecSpec(cmd=python(WRITER.format(blocks=160))))  # 10 MiB
        time.sleep(1.0)  # nobody reads

        written = int(progress.read_text() or 0)
        assert running.leader_running
        assert written * 65536 < 3 * 1024 * 1024  # the log's cap plus what the pipe holds
        base64_chunk = READ_CHUNK_BYTES * 4 // 3 + 4 + EVENT_OVERHEAD_BYTES
        assert running.log.kept_bytes <= 1024 * 1024 + 2 * base64_chunk

        most_kept = 0
        data = bytearray()
        for event in running.log.follow(0, keepalive_s=WAIT_S):
            assert event is not None
            most_kept = max(most_kept, running.log.kept_bytes)
            if event.type is EventType.STDOUT:
                data += payload_bytes(event.payload)
        assert data == b"".join(bytes([n % 256]) * 65536 for n in range(1, 161))
        assert most_kept <= 1024 * 1024 + 2 * base64_chunk
        assert progress.read_text() == "160"
    finally:
        registry.close()


def test_a_reader_resuming_after_n_gets_every_later_event(registry: ExecRegistry) -> None:
    running = registry.start(
        ExecSpec(cmd=("bash", "-c", "for i in $(seq 1 500); do echo $i; done"))
    )
    running.wait(WAIT_S)
    events = running.log.read(0)
    middle = events[len(events) // 2].id

    resumed = collect(running, after=middle)
    before = b"".join(
        payload_bytes(e.payload) for e in events if e.id <= middle and e.type == "stdout"
    )

    assert resumed.ids == [e.id for e in events if e.id > middle]
    assert (before + resumed.stdout).decode().split() == [str(i) for i in range(1, 501)]
    with pytest.raises(ExecEventsGone):  # acknowledged by the resume, so dropped
        running.log.read(middle - 1)


def test_a_dropped_stream_resumes_without_loss_while_output_flows(tmp_path: Path) -> None:
    """What was written out but lost in flight (here 256 KiB) is still there for the resume."""
    registry = make_registry(tmp_path, buffer_bytes=1024 * 1024, replay_bytes=512 * 1024)
    try:
        running = registry.start(ExecSpec(cmd=python(WRITER.format(blocks=64))))  # 4 MiB
        received: list[tuple[int, bytes]] = []
        stream = running.log.follow(0, keepalive_s=WAIT_S)
        for event in stream:
            assert event is not None
            received.append((event.id, payload_bytes(event.payload)))
            if sum(len(chunk) for _, chunk in received) > 2 * 1024 * 1024:
                break
        stream.close()  # the connection drops; the client saw less than was written out
        while sum(len(chunk) for _, chunk in received) > 2 * 1024 * 1024 - 256 * 1024:
            received.pop()

        rest = collect(running, after=received[-1][0])
        data = b"".join(chunk for _, chunk in received) + rest.stdout
        assert data == b"".join(bytes([n % 256]) * 65536 for n in range(1, 65))
        assert rest.exit["code"] == 0
    finally:
        registry.close()
