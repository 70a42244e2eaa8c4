"""Records of running execs on disk: an agent started after a crash ends what the last one left.

A vendor CLI's login (``vendor``) leads a session too, and is recorded here the same way.

Each exec leads a session of its own, which outlives the agent that started it: its timeout was
that agent's thread, and a new agent knows neither its id nor counts it against ``--max-execs``.
So the registry keeps one record per running exec in a directory of the agent's run dir (in a VM
``/run/hearth-agent/execs``, a tmpfs a reboot empties), written when the exec starts and removed
once its leader is reaped; and an agent that starts kills (SIGKILL) every process of each
recorded session whose agent is gone, then removes the record.

A pid alone is never trusted: a record names the leader and the agent that wrote it each by pid
and start time (``/proc/PID/stat``, clock ticks since boot). A record whose agent still runs (two
agents sharing the directory) is left alone; a leader whose pid now names a process started at
another time ended long ago (the kernel reuses no pid while its session has a member), so its
record is dropped and nothing is signalled; a process is killed only if it belongs to the
recorded session and started no earlier than its leader.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hearth_agent.log import JsonLogger

DIR_MODE = 0o700
FILE_MODE = 0o600
# Passes over /proc when killing a session: a process may fork while one pass runs.
_KILL_PASSES = 3


@dataclass(frozen=True)
class ProcessIdentity:
    """A process named so that a later process given the same pid is not mistaken for it."""

    pid: int
    start_ticks: int  # when it started, in clock ticks since boot

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The live process ``pid`` is now (a zombie counts as gone), or None."""
        found = _stat(pid)
        return None if found is None or found.state == "Z" else cls(pid, found.start_ticks)

    def alive(self) -> bool:
        """Whether this very process still runs."""
        return ProcessIdentity.of(self.pid) == self


@dataclass(frozen=True)
class _Stat:
    """What ``/proc/PID/stat`` says of a process that a record needs."""

    pid: int
    state: str
    session: int
    start_ticks: int


class ExecRecords:
    """One record per running exec in ``directory``; thread-safe (one file per exec)."""

    def __init__(
        self, directory: Path, *, logger: JsonLogger, owner: ProcessIdentity | None = None
    ) -> None:
        self.directory = directory
        self._logger = logger
        # The agent writing the records: this process, unless a test stands in for another.
        self._owner = owner if owner is not None else ProcessIdentity(os.getpid(), _self_ticks())

    @classmethod
    def create(cls, directory: Path, *, logger: JsonLogger) -> ExecRecords:
        """Records in ``directory``, created (0700, with missing parents) if needed; OSError."""
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        for path in reversed(missing):
            path.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        return cls(directory, logger=logger)

    def add(self, pid: int) -> None:
        """Record the exec whose leader is ``pid`` (started, not reaped); a failure is logged:
        the exec runs on, but would outlive a crash of the agent."""
        leader = _stat(pid)  # not reaped yet, so still there (a zombie at worst)
        if leader is None:
            return
        line = f"{pid} {leader.start_ticks} {self._owner.pid} {self._owner.start_ticks}\n"
        try:
            fd = os.open(self._path(pid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            self._logger.warning("exec_record_failed", pid=pid, reason=exc.strerror)

    def remove(self, pid: int) -> None:
        """Forget the exec whose leader ``pid`` was reaped."""
        with contextlib.suppress(FileNotFoundError):
            self._path(pid).unlink()

    def kill_left_over(self) -> int:
        """Kill the sessions recorded by agents that are gone and drop their records; how many
        processes were killed. Records of an agent that still runs are left alone."""
        killed = 0
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            self._logger.warning("exec_records_unreadable", reason=exc.strerror)
            return 0
        for name in names:
            path = self.directory / name
            record = _parse(path)
            if record is not None:
                leader, agent = record
                if agent == self._owner or agent.alive():
                    continue  # an exec still in the care of its agent
                killed += _kill_session(leader)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if killed:
            self._logger.warning("left_over_execs_killed", processes=killed)
        return killed

    def _path(self, pid: int) -> Path:
        return self.directory / str(pid)


def _parse(path: Path) -> tuple[ProcessIdentity, ProcessIdentity] | None:
    """A record's leader and agent, or None for a file that is not a whole record."""
    try:
        fields = [int(word) for word in path.read_text(encoding="ascii").split()]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if len(fields) != 4 or fields[0] <= 0:
        return None
    return ProcessIdentity(fields[0], fields[1]), ProcessIdentity(fields[2], fields[3])


def _kill_session(leader: ProcessIdentity) -> int:
    """SIGKILL every process of the session ``leader`` led that started no earlier than it,
    unless the leader's pid names another process now; how many were killed."""
    now = _stat(leader.pid)
    if now is not None and now.start_ticks != leader.start_ticks:
        return 0  # the leader is long gone and its pid reused: no process left of its session
    if os.getsid(0) == leader.pid:
        return 0  # this agent was itself started in that session; it does not end itself
    killed: set[int] = set()
    for _ in range(_KILL_PASSES):
        found = [
            process.pid
            for process in _processes()
            if process.session == leader.pid
            and process.start_ticks >= leader.start_ticks
            and process.state != "Z"
            and process.pid not in killed
        ]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
    return len(killed)


def _processes() -> Iterator[_Stat]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                yield found


def _stat(pid: int) -> _Stat | None:
    """``/proc/PID/stat``'s fields a record needs, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # After the command name (which may hold spaces and parentheses): state, ppid, pgrp,
            # session, ... and the 20th, the start time.
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if len(fields) < 20:
        return None
    return _Stat(
        pid=pid, state=fields[0].decode(), session=int(fields[3]), start_ticks=int(fields[19])
    )


def _self_ticks() -> int:
    found = _stat(os.getpid())
    return found.start_ticks if found is not None else 0
