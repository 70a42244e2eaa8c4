"""Firecracker processes: started directly or under the jailer, waited on, and stopped by PID.

Firecracker resolves relative API paths against its working directory, and a snapshot records
the drive paths it was given. So every path we hand the API is a bare name inside the VM's
*root* — its work directory (the process's cwd), or its chroot when jailed — and a clone whose
root holds its own ``rootfs`` restores the template's drive onto its own disk. ``VmRoot.stage``
puts a host file there: a symlink when not jailed, a hard link (or a device node for a block
device) inside a jail, where symlinks to the host would not resolve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import InvalidInput, ToolMissing, VmError, VmProcessExited
from hearth.tools import require_tool, tail_of_file
from hearth.vm import host
from hearth.vm.firecracker.client import reachable_socket_path
from hearth.vm.host import STOP_GRACE_S, forbid_core_dumps, stop_child, vmm_env
from hearth.vm.readiness import Backoff, Deadline
from hearth_agent.processes import live_args

API_SOCKET = "api.sock"
_VM_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_INSTALL_HINT = (
    "Debian does not package it: put a static release binary from "
    "https://github.com/firecracker-microvm/firecracker/releases on PATH"
)


def require_firecracker(binary: str | None = None, *, name: str = "firecracker") -> str:
    """The path of the firecracker (or jailer) binary, or ToolMissing saying how to get it."""
    found = shutil.which(binary or name)
    if found is None:
        raise ToolMissing(f"{binary or name} is not installed; {_INSTALL_HINT}")
    return found


def check_vm_id(vm_id: str) -> str:
    """Return ``vm_id`` if Firecracker and the jailer accept it (letters, digits, hyphens, ≤ 64)."""
    if not _VM_ID_RE.match(vm_id):
        raise InvalidInput(
            f"a firecracker VM id must be 1-64 letters, digits or '-', got {vm_id!r}"
        )
    return vm_id


@dataclass(frozen=True, kw_only=True)
class JailerConfig:
    """How to run Firecracker under its jailer (chroot, uid/gid, cgroups, netns)."""

    uid: int
    gid: int
    binary: str = "jailer"
    chroot_base_dir: Path = Path("/srv/jailer")
    cgroup_version: int = 2
    parent_cgroup: str | None = None
    cgroups: tuple[str, ...] = ()  # e.g. "cpu.max=50000 100000"
    resource_limits: tuple[str, ...] = ()  # e.g. "no-file=1024"
    cgroup_root: Path = field(default=Path("/sys/fs/cgroup"), repr=False)

    def jail_dir(self, firecracker: str, vm_id: str) -> Path:
        """``<chroot_base>/<exec file name>/<id>``: everything the jailer creates for a VM."""
        return self.chroot_base_dir / Path(firecracker).name / vm_id

    def root(self, firecracker: str, vm_id: str) -> Path:
        """The chroot, which the jailed Firecracker sees as ``/`` (and as its cwd)."""
        return self.jail_dir(firecracker, vm_id) / "root"

    def cgroup_dir(self, firecracker: str, vm_id: str) -> Path:
        """The cgroup (v2) the jailer puts the VM in."""
        return self.cgroup_root / (self.parent_cgroup or Path(firecracker).name) / vm_id

    def argv(self, *, jailer: str, firecracker: str, vm_id: str, netns: Path | None) -> list[str]:
        """The jailer's command line; Firecracker's own arguments follow ``--``."""
        argv = [jailer, "--id", vm_id, "--exec-file", firecracker]
        argv += ["--uid", str(self.uid), "--gid", str(self.gid)]
        argv += ["--chroot-base-dir", str(self.chroot_base_dir)]
        argv += ["--cgroup-version", str(self.cgroup_version)]
        if self.parent_cgroup:
            argv += ["--parent-cgroup", self.parent_cgroup]
        for cgroup in self.cgroups:
            argv += ["--cgroup", cgroup]
        for limit in self.resource_limits:
            argv += ["--resource-limit", limit]
        if netns is not None:
            argv += ["--netns", str(netns)]
        return [*argv, "--", "--api-sock", API_SOCKET]


@dataclass(frozen=True)
class VmRoot:
    """The directory Firecracker resolves relative API paths in: its cwd, or its chroot."""

    path: Path
    jail: JailerConfig | None = None

    @property
    def api_socket(self) -> Path:
        """The host path of the API socket."""
        return self.path / API_SOCKET

    def stage(self, name: str, source: Path, *, writable: bool = False) -> str:
        """Make ``source`` visible to Firecracker as ``name``; return the path to give the API."""
        target = self.path / name
        target.unlink(missing_ok=True)
        if self.jail is None:
            target.symlink_to(source.resolve())
            return name
        info = os.stat(source)
        if stat.S_ISBLK(info.st_mode):
            os.mknod(target, stat.S_IFBLK | 0o600, info.st_rdev)
            writable = True
        else:
            try:
                os.link(source, target)
            except OSError:
                # Another filesystem than the jail's: a copy is the only way in.
                shutil.copy2(source, target)
        if writable:
            os.chown(target, self.jail.uid, self.jail.gid)
        return name

    def create_file(self, name: str) -> str:
        """An empty file Firecracker may write (its log, its metrics)."""
        target = self.path / name
        target.touch(mode=0o600)
        if self.jail is not None:
            os.chown(target, self.jail.uid, self.jail.gid)
        return name


def firecracker_argv(*, binary: str, vm_id: str, netns: str | None) -> list[str]:
    """Firecracker's command line when not jailed, entering the VM's netns first."""
    argv = [binary, "--api-sock", API_SOCKET, "--id", vm_id]
    if netns is None:
        return argv
    return [require_tool("ip"), "netns", "exec", netns, *argv]


class FirecrackerProcess:
    """A Firecracker process this controller started (the jailer execs into it: same PID)."""

    def __init__(
        self,
        *,
        vm_id: str,
        proc: asyncio.subprocess.Process,
        root: VmRoot,
        console: Path,
        stderr: Path,
    ) -> None:
        self.vm_id = vm_id
        self.proc = proc
        self.root = root
        self.console = console
        self.stderr = stderr

    @classmethod
    async def start(
        cls, argv: list[str], *, vm_id: str, root: VmRoot, console: Path, stderr: Path
    ) -> FirecrackerProcess:
        """Start ``argv`` in ``root`` with the serial console (stdout) going to ``console``,
        none of the controller's settings in its environment and no core dump."""
        try:
            with console.open("ab") as out, stderr.open("ab") as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=root.path,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    env=vmm_env(),
                )
        except OSError as exc:
            raise VmError(
                f"VM {vm_id}: could not start {Path(argv[0]).name}: {exc.strerror}"
            ) from exc
        forbid_core_dumps(proc.pid)
        return cls(vm_id=vm_id, proc=proc, root=root, console=console, stderr=stderr)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while running."""
        return self.proc.returncode

    def output_tail(self, lines: int = 10) -> str:
        """The last lines of stderr and the console, for error messages."""
        parts = []
        for path in (self.stderr, self.console):
            with contextlib.suppress(OSError):
                text = tail_of_file(path, lines)  # the console: a guest can make it any size
                if text:
                    parts.append(f"[{path.name}] {text}")
        return "\n".join(parts) or "(no output)"

    async def wait_for_api(self, deadline: Deadline, *, backoff: Backoff | None = None) -> None:
        """Return once the API socket accepts connections; fail fast if the process exits."""
        last = "the socket does not exist yet"
        for delay in (backoff or Backoff(initial_s=0.005, cap_s=0.1)).delays():
            if self.returncode is not None:
                raise VmProcessExited(
                    f"VM {self.vm_id}: firecracker exited with status {self.returncode} before "
                    f"its API socket was up:\n{self.output_tail()}"
                )
            if self.root.api_socket.exists():
                path, dir_fd = reachable_socket_path(self.root.api_socket)
                try:
                    _, writer = await asyncio.open_unix_connection(path)
                    writer.close()
                    return
                except OSError as exc:
                    last = exc.strerror or type(exc).__name__
                finally:
                    if dir_fd is not None:
                        os.close(dir_fd)
            if deadline.expired:
                raise VmError(
                    f"VM {self.vm_id}: firecracker API socket not up after "
                    f"{deadline.seconds * 1000:.0f} ms: {last}"
                )
            await asyncio.sleep(min(delay, deadline.remaining()))

    async def stop(self, *, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; return the exit status."""
        return await stop_child(self.proc, grace_s=grace_s)


def is_our_process(pid: int, vm_id: str) -> bool:
    """True when ``pid`` is a live firecracker/jailer whose arguments name ``vm_id`` exactly."""
    args = live_args(pid)
    if not args or not any(n in Path(args[0]).name for n in ("firecracker", "jailer")):
        return False
    return vm_id in args or f"--id={vm_id}" in args


async def stop_pid(pid: int, vm_id: str, *, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a Firecracker that is not our child (found again after a restart), if it is ours."""
    await host.stop_pid(pid, lambda: is_our_process(pid, vm_id), grace_s=grace_s)
