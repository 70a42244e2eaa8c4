"""Running commands in the VM: each exec is a process group with an event log and a stdin.

An exec starts one command as the leader of a new session and process group
(``start_new_session``), in a clean environment (PATH, HOME, LANG=C.UTF-8, then the caller's
variables) and the workspace directory unless told otherwise. One pump thread reads its stdout
and stderr into the exec's ``EventLog`` (see ``exec_events`` for backpressure and resume); a
waiter thread watches the leader through a pidfd, enforces the timeout, and appends the one
``exit`` event once the output is drained. With ``pty`` the command runs on a pseudo-terminal
instead of pipes (``exec_pty``): one output stream, stdin to the terminal, and a size to change.

Nothing outlives its exec: timeout and kill signal the whole group and the rest of its session
(a shell with job control, or ``timeout``, puts processes in groups of their own), each process
once; when the leader ends, whatever it left running in its session is killed before the leader
is reaped (so the ids cannot have been reused). A process that makes itself a new session
escapes; its output is abandoned shortly after the leader ends (``exec_pump.Drain``). Nor does an
exec outlive the agent: with ``ExecRecords`` each running exec is recorded on disk, and an agent
started after a crash of this one kills what it left (``exec_records``).

Lifecycle (``ExecStatus``)::

    running ──▶ exited      (exit reason: exited | timeout | killed)

The registry caps how many execs run at once and forgets ended ones (``exec_retention``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hearth_agent.errors import (
    ExecNotFound,
    ExecStartFailed,
    InvalidInput,
    NotATerminal,
    StdinClosed,
    TooManyExecs,
)
from hearth_agent.exec_events import EventLog, EventType
from hearth_agent.exec_pty import Pty, PtySize, signal_session, spawn_on_pty
from hearth_agent.exec_pump import PUMP_POLL_S, Drain, pump_pipes
from hearth_agent.exec_records import ExecRecords
from hearth_agent.exec_retention import expired
from hearth_agent.exec_stdin import StdinFeeder
from hearth_agent.log import JsonLogger

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIB = 1024 * 1024
SHUTTING_DOWN = "the agent is shutting down; no exec can start"


class ExecStatus(StrEnum):
    """Where an exec stands."""

    RUNNING = "running"  # the process runs, or its output is still being drained
    EXITED = "exited"  # the exit event is in the log; nothing of the exec runs any more


class ExitReason(StrEnum):
    """Why an exec ended."""

    EXITED = "exited"  # the process ended by itself (an exit code, or a signal it got)
    TIMEOUT = "timeout"  # its timeout passed and the agent killed the group
    KILLED = "killed"  # a client (or the agent shutting down) killed the group


@dataclass(frozen=True)
class ExecSpec:
    """What to run; ``cwd`` and ``timeout_s`` default to the registry's."""

    cmd: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stdin: bytes | None = None  # written first, then stdin is closed unless stdin_open
    stdin_open: bool = False  # keep stdin open for later writes (POST /exec/{id}/stdin)
    timeout_s: float | None = None
    # The caller's own cap on execs running at once (the controller's per-VM setting); the
    # agent's ``ExecLimits.max_running`` holds whatever it says.
    max_running: int | None = None
    pty: PtySize | None = None  # run on a pseudo-terminal of this size (stdin always open)


@dataclass(frozen=True)
class ExecLimits:
    """The registry's caps and defaults, as data."""

    max_running: int = 16
    default_timeout_s: float = 600.0
    max_timeout_s: float = 6 * 3600.0
    buffer_bytes: int = 8 * MIB  # output kept for readers before the process is held back
    replay_bytes: int = 4 * MIB  # output already streamed that is kept for a reconnect
    stdin_backlog_bytes: int = 4 * MIB  # stdin queued for a process that is not reading
    keep_ended_s: float = 600.0  # how long an ended exec stays readable once its exit was read
    keep_ended: int = 16  # how many ended execs stay readable


@dataclass(frozen=True)
class ExitInfo:
    """How an exec ended: exit code or signal name, its duration, and why."""

    code: int | None
    signal: str | None
    duration_ms: int
    reason: ExitReason

    def as_json(self) -> dict[str, object]:
        """The exit event's payload."""
        return {
            "code": self.code,
            "signal": self.signal,
            "duration_ms": self.duration_ms,
            "reason": self.reason.value,
        }


class Exec:
    """One running (or ended) command: its process group, event log, stdin and exit."""

    def __init__(
        self,
        *,
        exec_id: str,
        spec: ExecSpec,
        cwd: Path,
        env: Mapping[str, str],
        timeout_s: float,
        limits: ExecLimits,
        logger: JsonLogger,
        records: ExecRecords | None = None,
    ) -> None:
        self.exec_id = exec_id
        self.cmd = spec.cmd
        self.timeout_s = timeout_s
        self.log = EventLog(buffer_bytes=limits.buffer_bytes, replay_bytes=limits.replay_bytes)
        self._logger = logger
        self._lock = threading.Lock()
        self._reason: ExitReason | None = None
        self._exit: ExitInfo | None = None
        self._leader_ended = threading.Event()
        self._ended_at: float | None = None
        self._discarded = threading.Event()
        self.started_at = time.time()
        self._started = time.monotonic()
        wants_stdin = spec.stdin is not None or spec.stdin_open
        self.pty: Pty | None = None
        try:
            if spec.pty is not None:
                self._process, self.pty = spawn_on_pty(spec.cmd, cwd=cwd, env=env, size=spec.pty)
            else:
                self._process = subprocess.Popen(
                    list(spec.cmd),
                    stdin=subprocess.PIPE if wants_stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    env=dict(env),
                    start_new_session=True,
                    close_fds=True,
                )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ExecStartFailed(f"cannot run {spec.cmd[0]!r}: {reason}") from exc
        self.pid = self._process.pid
        self._records = records
        if records is not None:  # so that an agent started after a crash of this one ends it
            records.add(self.pid)
        self._stdin: StdinFeeder | None = None
        stdin = self.pty.input() if self.pty is not None else self._process.stdin
        if stdin is not None:
            self._stdin = StdinFeeder(
                stdin,
                backlog_bytes=max(limits.stdin_backlog_bytes, len(spec.stdin or b"")),
                name=f"exec-{exec_id}-stdin",
            )
            if self.pty is not None:
                self._stdin.write(self.pty.typed(spec.stdin or b"", eof=False))
            else:
                self._stdin.write(spec.stdin or b"", eof=not spec.stdin_open)
        self._pump = threading.Thread(target=self._pump_output, name=f"exec-{exec_id}-pump")
        self._pump.daemon = True
        self._pump.start()
        waiter = threading.Thread(target=self._wait, name=f"exec-{exec_id}-wait", daemon=True)
        waiter.start()

    def __repr__(self) -> str:
        return f"Exec(exec_id={self.exec_id!r}, pid={self.pid})"

    @property
    def status(self) -> ExecStatus:
        """Running until the exit event is in the log."""
        return ExecStatus.EXITED if self.log.closed else ExecStatus.RUNNING

    @property
    def exit(self) -> ExitInfo | None:
        """How it ended, once the exit event is in."""
        with self._lock:
            return self._exit

    @property
    def leader_running(self) -> bool:
        """Whether the leader process has not ended yet (what the concurrency cap counts)."""
        return not self._leader_ended.is_set()

    @property
    def ended_at(self) -> float | None:
        """Monotonic time the leader ended, for retention."""
        with self._lock:
            return self._ended_at

    @property
    def collected(self) -> bool:
        """Whether a reader has had its exit event."""
        return self.log.collected

    def view(self) -> dict[str, object]:
        """The exec's status as JSON."""
        exit_info = self.exit
        terminal = {"pty": self.pty.size.as_json()} if self.pty is not None else {}
        return {
            "exec_id": self.exec_id,
            "pid": self.pid,
            "cmd": list(self.cmd),
            "status": self.status.value,
            "started_at": self.started_at,
            "timeout_s": self.timeout_s,
            "last_event_id": self.log.last_id,
            "exit": exit_info.as_json() if exit_info is not None else None,
            **terminal,
        }

    def write_stdin(self, data: bytes, *, eof: bool = False) -> int:
        """Queue bytes for the process's stdin (closing it after them if ``eof``)."""
        if self._stdin is None:
            raise StdinClosed("this exec's stdin was not kept open (start it with stdin_open)")
        if self.pty is not None:  # a terminal stays open: eof is its end-of-file key
            data, eof = self.pty.typed(data, eof=eof), False
        return self._stdin.write(data, eof=eof)

    def resize(self, size: PtySize) -> None:
        """Set the size of the exec's terminal (NotATerminal without one)."""
        if self.pty is None:
            raise NotATerminal("this exec has no terminal to resize (start it with pty)")
        self.pty.resize(size)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Signal the whole process group; False if the leader had already ended."""
        return self._signal_group(sig, ExitReason.KILLED)

    def wait(self, timeout_s: float | None = None) -> ExitInfo | None:
        """Block until the exit event is in (or ``timeout_s`` passes); how it ended."""
        self.log.wait_until_closed(timeout_s)
        return self.exit

    def discard(self) -> None:
        """Stop draining output nobody will read (the registry forgot this exec)."""
        self._discarded.set()

    def _signal_group(self, sig: signal.Signals, reason: ExitReason) -> bool:
        with self._lock:
            # The leader is reaped only under this lock, after its group was killed: while it is
            # unreaped its pid cannot name any other group.
            if self._leader_ended.is_set():
                return False
            if self._reason is None or reason is ExitReason.TIMEOUT:
                self._reason = reason
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return False
            # And the rest of its session: a process that left the group (job control, timeout).
            signal_session(self.pid, sig, except_group=self.pid)
            return True

    def _wait(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = None
        deadline = self._started + self.timeout_s
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            timed_out = False
            while not poller.poll(None if timed_out else _ms_until(deadline)):
                if not timed_out and time.monotonic() >= deadline:
                    self._signal_group(signal.SIGKILL, ExitReason.TIMEOUT)
                    timed_out = True
            os.close(pidfd)
        else:  # no pidfd (kernel before 5.3): wait without reaping, polling the deadline
            while os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() >= deadline:
                    self._signal_group(signal.SIGKILL, ExitReason.TIMEOUT)
                    deadline = float("inf")
                time.sleep(PUMP_POLL_S / 10)
        duration_ms = round((time.monotonic() - self._started) * 1000)
        with self._lock:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # what the leader left behind in its group
            signal_session(self.pid, signal.SIGKILL, except_group=self.pid)  # and its session
            returncode = self._process.wait()
            if self._records is not None:
                self._records.remove(self.pid)
            self._ended_at = time.monotonic()
            self._leader_ended.set()
            reason = self._reason or ExitReason.EXITED
            if reason is ExitReason.KILLED and returncode == 0:
                reason = ExitReason.EXITED  # it did its work whatever the signal was to it
        self._pump.join()
        if self._stdin is not None:
            self._stdin.close()
        info = ExitInfo(
            code=returncode if returncode >= 0 else None,
            signal=_signal_name(-returncode) if returncode < 0 else None,
            duration_ms=duration_ms,
            reason=reason,
        )
        with self._lock:
            self._exit = info
        self.log.append(EventType.EXIT, info.as_json())
        self._logger.info("exec_ended", exec_id=self.exec_id, pid=self.pid, **info.as_json())

    def _pump_output(self) -> None:
        drain = Drain(leader_ended=self._leader_ended, discarded=self._discarded)
        if self.pty is not None:
            self.pty.pump(self.log, drain)
            return
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        pipes = {EventType.STDOUT: self._process.stdout, EventType.STDERR: self._process.stderr}
        pump_pipes(pipes, self.log, drain)


def prepare_workspace(path: Path) -> None:
    """Create the workspace (and any missing parent) with mode 0700; an existing one is kept."""
    missing = [d for d in (path, *path.parents) if not d.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _ms_until(deadline: float) -> int:
    """Milliseconds from now to ``deadline`` for poll(), rounded up so it never spins."""
    return max(0, int((deadline - time.monotonic()) * 1000) + 1)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


class ExecRegistry:
    """Starts execs, finds them by id, caps how many run, and kills them all at shutdown."""

    def __init__(
        self,
        *,
        workspace: Path,
        home: Path,
        logger: JsonLogger,
        limits: ExecLimits | None = None,
        records: ExecRecords | None = None,
    ) -> None:
        self.workspace = workspace
        self.home = home
        self.limits = limits if limits is not None else ExecLimits()
        self._logger = logger
        self._records = records
        self._lock = threading.Lock()
        self._execs: dict[str, Exec] = {}
        self._starting = 0
        self._closed = False

    def base_env(self) -> dict[str, str]:
        """The environment every exec starts from, before its own variables."""
        return {"PATH": BASE_PATH, "HOME": str(self.home), "LANG": "C.UTF-8"}

    def start(self, spec: ExecSpec) -> Exec:
        """Start ``spec``; raises TooManyExecs past the cap, InvalidInput for a bad spec."""
        if not spec.cmd:
            raise InvalidInput("field 'cmd' must be a non-empty list of strings")
        cwd = self._resolve_cwd(spec.cwd)
        timeout_s = spec.timeout_s if spec.timeout_s is not None else self.limits.default_timeout_s
        if not 0 < timeout_s <= self.limits.max_timeout_s:
            raise InvalidInput(
                f"field 'timeout_s' must be above 0 and at most {self.limits.max_timeout_s:g}"
            )
        with self._lock:
            if self._closed:
                raise TooManyExecs(SHUTTING_DOWN)
            self._forget_expired()
            running = self._starting + sum(e.leader_running for e in self._execs.values())
            cap = min(self.limits.max_running, spec.max_running or self.limits.max_running)
            if running >= cap:
                raise TooManyExecs(
                    f"{running} execs are running, the most this VM allows at once; "
                    "wait for one to end or kill one"
                )
            self._starting += 1
        try:
            started = Exec(
                exec_id=secrets.token_hex(12),
                spec=spec,
                cwd=cwd,
                env={**self.base_env(), **spec.env},
                timeout_s=timeout_s,
                limits=self.limits,
                logger=self._logger,
                records=self._records,
            )
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            closed = self._closed
            if not closed:
                self._execs[started.exec_id] = started
        if closed:  # close() ran while it started, and could not see it: it must not outlive it
            started.kill(signal.SIGKILL)
            started.discard()
            raise TooManyExecs(SHUTTING_DOWN)
        self._logger.info(
            "exec_started",
            exec_id=started.exec_id,
            pid=started.pid,
            program=os.path.basename(spec.cmd[0]),
            timeout_s=timeout_s,
        )
        return started

    def get(self, exec_id: str) -> Exec:
        """The exec with this id; raises ExecNotFound."""
        with self._lock:
            self._forget_expired()
            found = self._execs.get(exec_id)
        if found is None:
            raise ExecNotFound(f"no exec with id {exec_id!r}")
        return found

    def running(self) -> list[Exec]:
        """The execs whose leader has not ended."""
        with self._lock:
            return [e for e in self._execs.values() if e.leader_running]

    def close(self, timeout_s: float = 5.0) -> None:
        """Refuse new execs, kill every running group, and wait (bounded) for their exit events.

        Output nobody has read is no longer drained: after shutdown nobody will read it.
        """
        with self._lock:
            self._closed = True
            execs = list(self._execs.values())
        for running in execs:
            running.kill(signal.SIGKILL)
            running.discard()
        deadline = time.monotonic() + timeout_s
        for running in execs:
            running.wait(max(0.0, deadline - time.monotonic()))

    def _resolve_cwd(self, cwd: Path | None) -> Path:
        resolved = self.workspace if cwd is None else self.workspace / cwd
        if not resolved.is_dir():
            raise InvalidInput(f"field 'cwd': {str(resolved)!r} is not an existing directory")
        return resolved

    def _forget_expired(self) -> None:
        """Forget the ended execs past retention (``exec_retention``); lock held."""
        for old in expired(list(self._execs.values()), self.limits, now=time.monotonic()):
            old.discard()
            del self._execs[old.exec_id]
