"""Starting QEMU, knowing which host processes are this backend's QEMUs, and stopping one that
is not our child."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hearth.vm import host
from hearth_agent.processes import live_args


async def spawn_qemu(
    argv: list[str], *, stderr: Path, pass_fds: tuple[int, ...] = ()
) -> asyncio.subprocess.Process:
    """Start QEMU in a session of its own (a signal to the controller's group does not reach
    it), stdio closed but stderr, which goes to ``stderr``."""
    with stderr.open("wb") as err:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            pass_fds=pass_fds,
        )


def is_our_process(pid: int, workdir: Path) -> bool:
    """True when ``pid`` is alive and is the QEMU running from ``workdir`` (not a reused PID)."""
    args = live_args(pid)
    return args is not None and any(str(workdir) in arg for arg in args)


def qemu_pids_running_from(directory: Path) -> list[int]:
    """Live QEMU processes whose command line names ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = live_args(int(entry.name))
        if args and "qemu-system" in args[0] and any(str(directory) in arg for arg in args):
            found.append(int(entry.name))
    return found


async def stop_adopted(pid: int, workdir: Path) -> None:
    """Stop a QEMU found again after a controller restart (not our child), if it still is ours."""
    await host.stop_pid(pid, lambda: is_our_process(pid, workdir))
