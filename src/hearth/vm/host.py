"""Host-side facts and chores every VM backend shares: ids, loopback ports, disk use, and the
environment, identity and stopping of the VMM processes it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from hearth.vm.readiness import Deadline

STOP_GRACE_S = 3.0
# Where controllers before the sealed token (store migration 0009) kept it, in clear.
LEGACY_TOKEN_FILE = "agent.token"  # noqa: S105 (a file name)
# All of the controller's environment a VMM gets, and with it what the VMM runs (QEMU's
# ``exec:cat`` of a migration, a guest forward's socat): enough to find programs and speak the
# locale, none of the controller's keys (``HEARTH_MASTER_KEY``, …) for a guest that breaks into
# its VMM to read.
_VMM_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")


def vmm_env() -> dict[str, str]:
    """The environment a VMM is started with: ``_VMM_ENV`` from the controller's, if set (PATH
    always)."""
    env = {name: os.environ[name] for name in _VMM_ENV if os.environ.get(name)}
    env.setdefault("PATH", os.defpath)
    return env


def forbid_core_dumps(pid: int) -> None:
    """Let the VMM ``pid``, just started, dump no core: one would hold guest memory (tokens,
    credentials). Set from outside (no preexec_fn: unsafe in a process with threads) while the
    VMM still starts, before its guest's memory fills; nothing if it has ended already."""
    with contextlib.suppress(ProcessLookupError):
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))


def new_vm_id() -> str:
    """A fresh VM id (also a valid Firecracker id: letters, digits, hyphens, at most 64)."""
    return f"vm-{uuid.uuid4()}"


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bytes_on_disk(path: Path) -> int:
    """Bytes a file really occupies (sparse-aware); 0 when it does not exist."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def read_legacy_token(workdir: Path) -> str | None:
    """The agent token an older controller kept in clear in the VM's work dir, if any (the
    controller now keeps it sealed in the store; ``drop_legacy_token`` removes the file)."""
    try:
        return (workdir / LEGACY_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def drop_legacy_token(workdir: Path) -> None:
    """Remove the clear-text token file an older controller left in ``workdir``."""
    (workdir / LEGACY_TOKEN_FILE).unlink(missing_ok=True)


async def stop_child(proc: asyncio.subprocess.Process, *, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM a child, SIGKILL it after ``grace_s``; return its exit status (idempotent)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


async def stop_pid(pid: int, ours: Callable[[], bool], *, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a process that is not our child (found again after a controller restart) by PID,
    only while ``ours()`` says it still is the VMM we started (not a reused PID)."""
    if not ours():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = Deadline.after(grace_s)
    while ours() and not deadline.expired:
        await asyncio.sleep(0.05)
    if ours():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
