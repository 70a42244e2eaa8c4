"""Records of running execs, with real processes: an agent that starts kills what a dead agent's
execs left running, and nothing of an agent still running or a process whose pid was reused."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth_agent.exec_records import ExecRecords, ProcessIdentity
from hearth_agent.execs import ExecRegistry, ExecSpec
from hearth_agent.log import JsonLogger
from tests.unit.test_agent_execs import WAIT_S, process_gone, wait_until


class Sessions:
    """Starts processes as the agent starts execs (each the leader of a new session), and kills
    by pid whatever of them a test leaves running."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []
        self._pids: list[int] = []

    def lead(self, script: str) -> subprocess.Popen[bytes]:
        """Run ``script`` in ``sh`` as the leader of a session of its own."""
        process = subprocess.Popen(
            ["sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True
        )
        self._started.append(process)
        return process

    def child_pid(self, process: subprocess.Popen[bytes]) -> int:
        """The pid the leader's script printed first (one of its children), to kill at the end."""
        assert process.stdout is not None
        pid = int(process.stdout.readline())
        self._pids.append(pid)
        return pid

    def close(self) -> None:
        """Kill and reap every process started here, by pid."""
        for pid in self._pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        for process in self._started:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    """Session leaders started by the test; afterwards, none is left running."""
    started = Sessions()
    try:
        yield started
    finally:
        started.close()


def dead_agent(sessions: Sessions) -> ProcessIdentity:
    """The identity of a process that has ended: an agent that crashed."""
    process = sessions.lead("exec sleep 60")
    identity = ProcessIdentity.of(process.pid)
    assert identity is not None
    process.kill()
    process.wait()
    assert not identity.alive()
    return identity


def records_of(tmp_path: Path, owner: ProcessIdentity | None = None) -> ExecRecords:
    """Records in ``tmp_path/run/execs``, written as ``owner`` (default: this process)."""
    directory = tmp_path / "run" / "execs"
    ExecRecords.create(directory, logger=JsonLogger(stream=io.StringIO()))
    return ExecRecords(directory, logger=JsonLogger(stream=io.StringIO()), owner=owner)


def test_an_agent_kills_what_the_execs_of_a_dead_agent_left_and_drops_their_records(
    tmp_path: Path, sessions: Sessions
) -> None:
    old = records_of(tmp_path, owner=dead_agent(sessions))
    # A leader still running with a child in its group, and one that ended leaving its child.
    running = sessions.lead("sleep 60 & echo $!; exec sleep 60")
    running_child = sessions.child_pid(running)
    ended = sessions.lead("sleep 60 & echo $!")
    ended_child = sessions.child_pid(ended)
    old.add(running.pid)
    old.add(ended.pid)
    ended.wait(WAIT_S)

    killed = records_of(tmp_path).kill_left_over()

    assert killed == 3
    assert running.wait(WAIT_S) == -signal.SIGKILL
    assert wait_until(lambda: process_gone(running_child) and process_gone(ended_child))
    assert os.listdir(old.directory) == []


def test_the_execs_of_an_agent_that_still_runs_are_left_alone(
    tmp_path: Path, sessions: Sessions
) -> None:
    # Two agents sharing a run directory: the second to start must not end the first's execs.
    first_agent = sessions.lead("exec sleep 60")
    owner = ProcessIdentity.of(first_agent.pid)
    old = records_of(tmp_path, owner=owner)
    running = sessions.lead("exec sleep 60")
    old.add(running.pid)

    assert records_of(tmp_path).kill_left_over() == 0

    assert running.poll() is None
    assert os.listdir(old.directory) == [str(running.pid)]


def test_a_recorded_pid_that_now_names_another_process_is_not_signalled(
    tmp_path: Path, sessions: Sessions
) -> None:
    agent = dead_agent(sessions)
    records = records_of(tmp_path)
    unrelated = sessions.lead("exec sleep 60")
    now = ProcessIdentity.of(unrelated.pid)
    assert now is not None
    # As a dead agent recorded an exec whose leader had this pid and ended long ago: the same pid,
    # an earlier start.
    (records.directory / str(unrelated.pid)).write_text(
        f"{unrelated.pid} {now.start_ticks - 1} {agent.pid} {agent.start_ticks}\n"
    )

    assert records.kill_left_over() == 0

    assert unrelated.poll() is None
    assert os.listdir(records.directory) == []


def test_a_partial_record_is_dropped(tmp_path: Path) -> None:
    records = records_of(tmp_path)
    (records.directory / "123").write_text("123 4")

    assert records.kill_left_over() == 0
    assert os.listdir(records.directory) == []


def test_a_registry_records_each_exec_while_its_leader_runs(tmp_path: Path) -> None:
    records = records_of(tmp_path)
    registry = ExecRegistry(
        workspace=tmp_path, home=tmp_path, logger=JsonLogger(stream=io.StringIO()), records=records
    )
    try:
        running = registry.start(ExecSpec(cmd=("sleep", "60")))
        leader, agent = ProcessIdentity.of(running.pid), ProcessIdentity.of(os.getpid())
        assert leader is not None
        assert agent is not None
        assert os.listdir(records.directory) == [str(running.pid)]
        assert (records.directory / str(running.pid)).read_text().split() == [
            str(n) for n in (leader.pid, leader.start_ticks, agent.pid, agent.start_ticks)
        ]

        running.kill()
        assert running.wait(WAIT_S) is not None
        assert os.listdir(records.directory) == []
    finally:
        registry.close()
