"""Execs on a pseudo-terminal: the terminal's size, starting a command on it, and its output.

An exec started with ``"pty": {"cols", "rows"}`` gets a new pseudo-terminal instead of pipes:
the command is the leader of a new session whose controlling terminal is the PTY's slave (so
job control, ``isatty`` and full-screen interfaces work), with ``TERM=xterm-256color`` unless
the caller sets its own. Its stdout and stderr are the one terminal: the output arrives as
``stdout`` events, decoded as for pipes. Stdin writes go to the master, and ``resize`` sets the
terminal's size (``TIOCSWINSZ``), on which the kernel sends ``SIGWINCH`` to the terminal's
foreground process group.

``Popen`` cannot make a terminal controlling (``preexec_fn`` is unsafe in the agent, which runs
threads), so the command starts through ``child_exec``'s trampoline, which takes the terminal
(``TIOCSCTTY``), undoes what this interpreter's start did to the process (SIGPIPE and SIGXFSZ
ignored, LC_CTYPE coerced) and then ``exec``s the command in the same process.

A shell on a terminal puts each job in a process group of its own, so ending the exec's group is
not enough: ``signal_session`` signals the processes of the exec's session, which kill, timeout
and the leader's end use for every exec (on pipes too: ``timeout`` and ``set -m`` make groups).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import struct
import subprocess
import termios
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hearth_agent.child_exec import terminal_program_argv
from hearth_agent.errors import InvalidInput, StdinClosed
from hearth_agent.exec_events import EventLog, EventType, OutputDecoder
from hearth_agent.exec_pump import PUMP_POLL_S, READ_CHUNK_BYTES, Drain

TERM = "xterm-256color"
EOF_CHARACTER = b"\x04"  # a terminal's end of file (VEOF), unless the program changed it
# Bytes after which the terminal's line buffer is empty (ICRNL makes a carriage return a newline).
_LINE_ENDS = (b"\n", b"\r", EOF_CHARACTER)
MAX_CELLS = 1000  # columns or rows; far beyond any screen, small enough for any terminal
# Passes over /proc when signalling a session: a process may fork while one pass runs.
_SESSION_PASSES = 3


@dataclass(frozen=True)
class PtySize:
    """A terminal's size in character cells."""

    cols: int
    rows: int

    def __post_init__(self) -> None:
        for name in ("cols", "rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CELLS:
                raise InvalidInput(f"field '{name}' must be a whole number from 1 to {MAX_CELLS}")

    @classmethod
    def parse(cls, value: object, what: str = "field 'pty'") -> PtySize:
        """A JSON ``{"cols", "rows"}`` object as a size; InvalidInput naming ``what`` it was."""
        if not isinstance(value, dict) or set(value) != {"cols", "rows"}:
            raise InvalidInput(f"{what} must be an object with 'cols' and 'rows' only")
        return cls(cols=value["cols"], rows=value["rows"])

    def as_json(self) -> dict[str, int]:
        """The size as the API shows it."""
        return {"cols": self.cols, "rows": self.rows}


class Pty:
    """The master side of an exec's pseudo-terminal: its input, its size and its output.

    The master is closed once its output has been pumped; a resize after that is refused rather
    than sent to a descriptor number the process may have reused.
    """

    def __init__(self, master: int, size: PtySize) -> None:
        self._master = master
        self._size = size
        self._lock = threading.Lock()
        self._line_open = False  # whether what was typed last left an unfinished line

    @property
    def size(self) -> PtySize:
        """The size last set."""
        with self._lock:
            return self._size

    def input(self) -> IO[bytes]:
        """A writer of the terminal's input (its own descriptor, closed by whoever holds it)."""
        with self._lock:
            if self._master < 0:
                raise StdinClosed("the terminal is closed")
            return os.fdopen(os.dup(self._master), "wb", buffering=0)

    def typed(self, data: bytes, *, eof: bool) -> bytes:
        """What to write to the terminal for ``data`` and then, with ``eof``, its end-of-file
        key: twice after an unfinished line, where the first one only ends the line."""
        with self._lock:
            if data:
                self._line_open = data[-1:] not in _LINE_ENDS
            if not eof:
                return data
            keys = EOF_CHARACTER * (2 if self._line_open else 1)
            self._line_open = False
            return data + keys

    def resize(self, size: PtySize) -> None:
        """Set the terminal's size; the kernel signals SIGWINCH to its foreground group."""
        with self._lock:
            if self._master < 0:
                raise StdinClosed("the terminal is closed: the exec has ended")
            _set_size(self._master, size)
            self._size = size

    def pump(self, log: EventLog, drain: Drain) -> None:
        """Read the terminal's output into ``log`` as ``stdout`` events until no process holds
        the terminal any more (or ``drain`` is over), then close the master."""
        master = self._master
        decoder = OutputDecoder()
        poller = select.poll()
        poller.register(master, select.POLLIN)
        try:
            while not drain.over():
                if not drain.wait_for_room(log) or not poller.poll(PUMP_POLL_S * 1000):
                    continue
                try:
                    chunk = os.read(master, READ_CHUNK_BYTES)
                except OSError as exc:  # EIO: every process closed the slave side
                    if exc.errno != errno.EIO:
                        raise
                    chunk = b""
                if not chunk:
                    break
                payload = decoder.decode(chunk)
                if payload is not None:
                    log.append(EventType.STDOUT, payload)
            payload = decoder.flush()
            if payload is not None:
                log.append(EventType.STDOUT, payload)
        finally:
            self._close()

    def _close(self) -> None:
        with self._lock:
            master, self._master = self._master, -1
        if master >= 0:
            os.close(master)


def spawn_on_pty(
    cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], size: PtySize
) -> tuple[subprocess.Popen[bytes], Pty]:
    """Start ``cmd`` as the leader of a new session on a new terminal of ``size``.

    OSError (as ``Popen`` raises it) when the program cannot be found.
    """
    env = {"TERM": TERM, **env}
    _check_program(cmd[0], cwd=cwd, path=env.get("PATH", os.defpath))
    master, slave = os.openpty()
    try:
        _set_size(master, size)
        process = subprocess.Popen(
            terminal_program_argv(cmd, env),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return process, Pty(master, size)


def _check_program(program: str, *, cwd: Path, path: str) -> None:
    """Raise the OSError ``Popen`` would for a program that cannot be run: the trampoline would
    only find out after the exec had started."""
    if "/" not in program:
        if shutil.which(program, path=path) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        return
    target = cwd / program
    if not target.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not target.is_file() or not os.access(target, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


def signal_session(session_id: int, sig: int, *, except_group: int | None = None) -> int:
    """Send ``sig`` once to every process of the session ``session_id``; how many got it.

    ``except_group`` leaves out the members of that process group: a caller that has just
    signalled the group with ``killpg`` must not signal them a second time (a program handling
    SIGTERM would run its handler twice).
    """
    signalled: set[int] = set()
    for _ in range(_SESSION_PASSES):
        found = [pid for pid in _session_members(session_id, except_group) if pid not in signalled]
        if not found:
            break
        for pid in found:
            signalled.add(pid)
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                signalled.discard(pid)
    return len(signalled)


def _session_members(session_id: int, except_group: int | None = None) -> list[int]:
    """The live processes of the session ``session_id``, zombies and ``except_group`` left out."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command name: state, ppid, pgrp, session.
        if len(fields) < 4 or fields[0] == b"Z" or int(fields[3]) != session_id:
            continue
        if except_group is None or int(fields[2]) != except_group:
            members.append(int(entry))
    return members


def _set_size(fd: int, size: PtySize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))
