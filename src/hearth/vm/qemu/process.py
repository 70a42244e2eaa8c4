"""Starting QEMU, knowing which host processes are this backend's QEMUs, and stopping one that
is not our child."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from hearth.vm import host
from hearth_agent.processes import live_args


async def spawn_qemu(
    argv: list[str], *, stderr: Path, pass_fds: tuple[int, ...] = ()
) -> asyncio.subprocess.Process:
    """Start QEMU in a session of its own (a signal to the controller's group does not reach
    it), stdio closed but stderr, which goes to ``stderr``, with ``host.vmm_env`` and no core dump
    (one would hold guest memory: tokens, credentials)."""
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            pass_fds=pass_fds,
            env=host.vmm_env(),
        )
    host.forbid_core_dumps(proc.pid)  # and ``-machine dump-guest-core=off`` besides
    return proc


def is_our_process(pid: int, workdir: Path) -> bool:
    """True when ``pid`` is alive and is the QEMU running from ``workdir`` (not a reused PID,
    nor another program naming the directory, such as a ``tail`` of its console)."""
    return qemu_args(pid, workdir) is not None


def qemu_args(pid: int, workdir: Path) -> list[str] | None:
    """The command line of ``pid`` while it is the QEMU running from ``workdir``; else None."""
    args = live_args(pid)
    return args if _qemu_naming(args, workdir) else None


def qemu_pids_running_from(directory: Path) -> list[int]:
    """Live QEMU processes whose command line names ``directory``."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _qemu_naming(live_args(int(entry.name)), directory)
    ]


def _qemu_naming(args: list[str] | None, directory: Path) -> bool:
    # QEMU, or for a moment after its spawn the ``ip netns exec`` about to become it.
    if not args or not any("qemu-system" in Path(arg).name for arg in args[:5]):
        return False
    return any(str(directory) in arg for arg in args)


async def stop_adopted(pid: int | None, workdir: Path) -> None:
    """Stop a QEMU found again after a controller restart (not our child), if it still is ours;
    without a PID (its controller died before recording it), every QEMU running from
    ``workdir``."""
    for found in [pid] if pid else qemu_pids_running_from(workdir):
        await host.stop_pid(found, functools.partial(is_our_process, found, workdir))
