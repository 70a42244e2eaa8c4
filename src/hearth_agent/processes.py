"""Which process is which, read from /proc: the agent serving an install root, the guard watching
it, and when each started; and stopping them by PID (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

AGENT_MODULE = "hearth_agent"
GUARD_MODULE = "hearth_agent.update_guard"
_PROC = Path("/proc")


def live_args(pid: int) -> list[str] | None:
    """The arguments of process ``pid`` while it lives (a zombie does not); None otherwise."""
    if pid <= 0:
        return None
    try:
        cmdline = (_PROC / str(pid) / "cmdline").read_bytes()
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    return [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]


def module_of(args: list[str]) -> str | None:
    """The module a Python command line runs with ``-m``, if any."""
    for index, arg in enumerate(args[:-1]):
        if arg == "-m":
            return args[index + 1]
    return None


def is_agent(pid: int) -> bool:
    """Whether ``pid`` is a live ``python3 -m hearth_agent`` other than this process."""
    args = live_args(pid)
    return pid != os.getpid() and args is not None and module_of(args) == AGENT_MODULE


def is_guard_of(pid: int, root: Path) -> bool:
    """Whether ``pid`` is a live update guard watching the install root ``root``."""
    args = live_args(pid)
    return (
        args is not None
        and module_of(args) == GUARD_MODULE
        and _same_path(pid, _option(args, "--root"), root)
    )


def agents_of(root: Path) -> list[int]:
    """Every live agent started with ``--updates`` ``root``, this process excepted: the one in
    the pid file, and any that hangs before it could write its PID there."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        args = live_args(pid)
        if (
            args is not None
            and module_of(args) == AGENT_MODULE
            and _same_path(pid, _option(args, "--updates"), root)
        ):
            found.append(pid)
    return sorted(found)


def ticks_since_boot() -> int:
    """Now, in the clock ticks /proc/<pid>/stat counts process start times in."""
    uptime_s = float((_PROC / "uptime").read_text().split()[0])
    return int(uptime_s * os.sysconf("SC_CLK_TCK"))


def started_at(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Field 22 of stat; fields 3 on follow the command name, which may contain anything but ")".
    return int(stat.rsplit(")", 1)[-1].split()[19])


def stop_processes(pids: Iterable[int], *, grace_s: float) -> list[int]:
    """SIGTERM each process, SIGKILL what is still alive after ``grace_s``; the PIDs signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(live_args(pid) is not None for pid in signalled) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in signalled:
        if live_args(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return signalled


def _option(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def _same_path(pid: int, value: str | None, root: Path) -> bool:
    """Whether a path option of process ``pid`` names ``root`` (relative to its working dir)."""
    if value is None:
        return False
    path = Path(value)
    if not path.is_absolute():
        try:
            path = Path(os.readlink(_PROC / str(pid) / "cwd")) / path
        except OSError:
            return False
    return os.path.normpath(path) == os.path.normpath(root)
