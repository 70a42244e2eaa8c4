"""The original controller's way to start a VM, run for real as the baseline Hearth is measured by.

The old controller copied the whole golden image for every VM, cold-booted QEMU on that copy and
polled the agent's ``/health`` every 2 s. Here that method runs with Hearth's own kernel,
initramfs, machine type and accelerator, so the only differences are the ones being measured:
a full copy instead of a qcow2 overlay, no snapshot, fixed 2 s polling instead of backoff.
The time counted runs from the start of the copy to the first HTTP 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from hearth.bench.errors import BenchError
from hearth.errors import VmNotReady, VmProcessExited
from hearth.images.manifest import ImageDir
from hearth.tools import tail_of_file
from hearth.vm.accel import Accel
from hearth.vm.host import bytes_on_disk, free_local_port, stop_child
from hearth.vm.qemu.command import VmPaths, qemu_argv
from hearth.vm.qemu.process import qemu_pids_running_from, spawn_qemu
from hearth.vm.readiness import COLD_BOOT_DEADLINE_S, Deadline
from hearth.vm.types import VmSpec

HEALTH_POLL_INTERVAL_S = 2.0  # the original controller's fixed polling interval


@dataclass(kw_only=True)
class BaselineVm:
    """One VM started the old way, and what starting it cost."""

    id: str
    workdir: Path
    disk: Path
    pid: int
    agent_url: str
    copy_s: float  # the full copy of the golden image
    time_to_healthy_s: float  # from the start of the copy to the first HTTP 200
    disk_bytes: int  # what the copy occupies on disk


class BaselineLauncher:
    """Starts and stops VMs the original controller's way under ``root``."""

    def __init__(
        self,
        *,
        image: ImageDir,
        root: Path,
        run_dir: Path,
        binary: str,
        accel: Accel,
        poll_interval_s: float = HEALTH_POLL_INTERVAL_S,
        deadline_s: float = COLD_BOOT_DEADLINE_S,
    ) -> None:
        self.image = image
        self.root = root
        self.run_dir = run_dir
        self.binary = binary
        self.accel = accel
        self.poll_interval_s = poll_interval_s
        self.deadline_s = deadline_s
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, spec: VmSpec) -> BaselineVm:
        """Copy the golden image, cold-boot QEMU on the copy, poll ``/health`` every 2 s."""
        vm_id = f"baseline-{uuid.uuid4().hex[:12]}"
        paths = VmPaths(workdir=self.root / vm_id, run_dir=self.run_dir, vm_id=vm_id)
        paths.workdir.mkdir(mode=0o700, parents=True)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        disk = paths.workdir / "disk.raw"
        started = time.monotonic()
        try:
            # shutil.copyfile writes every byte (holes included): a full, non-sparse copy.
            await asyncio.to_thread(shutil.copyfile, self.image.rootfs, disk)
            copy_s = time.monotonic() - started
            port = free_local_port()
            argv = raw_disk_argv(
                qemu_argv(
                    binary=self.binary,
                    vm_id=vm_id,
                    image=self.image,
                    spec=spec,
                    accel=self.accel,
                    paths=paths,
                    host_port=port,
                ),
                disk,
            )
            proc = await spawn_qemu(argv, stderr=paths.stderr)
            self._procs[vm_id] = proc
            url = f"http://127.0.0.1:{port}"
            await self._poll_health(vm_id, url, proc, paths)
            healthy_s = time.monotonic() - started
        except BaseException:
            await self._stop(vm_id, paths.workdir)
            raise
        return BaselineVm(
            id=vm_id,
            workdir=paths.workdir,
            disk=disk,
            pid=proc.pid,
            agent_url=url,
            copy_s=copy_s,
            time_to_healthy_s=healthy_s,
            disk_bytes=bytes_on_disk(disk),
        )

    async def destroy(self, vm: BaselineVm) -> None:
        """Stop QEMU and delete the copy; idempotent."""
        await self._stop(vm.id, vm.workdir)

    async def destroy_all(self) -> None:
        """Stop every VM this launcher still runs (teardown after a failure)."""
        for vm_id in list(self._procs):
            await self._stop(vm_id, self.root / vm_id)

    def leftovers(self) -> list[str]:
        """What baseline VMs still hold on the host (QEMU processes, work dirs, QMP sockets),
        each in a short sentence; empty once every one is destroyed. It removes nothing."""
        found = [
            f"baseline QEMU process {pid} is still running"
            for pid in sorted(qemu_pids_running_from(self.root))
        ]
        if self.root.is_dir():
            found += [
                f"baseline work directory {d} is still there" for d in sorted(self.root.iterdir())
            ]
        if self.run_dir.is_dir():
            found += [
                f"baseline QMP socket {s} is still there"
                for s in sorted(self.run_dir.glob("*.qmp"))
            ]
        return found

    async def _poll_health(
        self, vm_id: str, url: str, proc: asyncio.subprocess.Process, paths: VmPaths
    ) -> None:
        """Probe ``/health`` at a fixed interval (one probe every 2 s) until it answers 200."""
        deadline = Deadline.after(self.deadline_s)
        last_error = "no probe completed"
        async with httpx.AsyncClient() as http:
            while True:
                probe_started = time.monotonic()
                if proc.returncode is not None:
                    console = ""
                    with contextlib.suppress(OSError):
                        console = tail_of_file(paths.console, 15)
                    raise VmProcessExited(
                        f"baseline VM {vm_id} exited with status {proc.returncode}; "
                        f"console:\n{console}"
                    )
                try:
                    response = await http.get(
                        f"{url}/health",
                        timeout=max(0.05, min(self.poll_interval_s, deadline.remaining())),
                    )
                    if response.status_code == 200:
                        return
                    last_error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last_error = type(exc).__name__
                if deadline.expired:
                    raise VmNotReady(
                        f"baseline VM {vm_id} not ready after {deadline.seconds:.0f} s: "
                        f"{last_error}"
                    )
                elapsed = time.monotonic() - probe_started
                await asyncio.sleep(max(0.0, self.poll_interval_s - elapsed))

    async def _stop(self, vm_id: str, workdir: Path) -> None:
        proc = self._procs.pop(vm_id, None)
        if proc is not None:
            await stop_child(proc)
        VmPaths(workdir=workdir, run_dir=self.run_dir, vm_id=vm_id).qmp.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


def raw_disk_argv(argv: list[str], disk: Path) -> list[str]:
    """Hearth's QEMU argv with its qcow2 overlay drive swapped for the raw full copy ``disk``."""
    drives = [i for i, arg in enumerate(argv) if arg == "-drive"]
    if len(drives) != 1:
        raise BenchError(f"expected one -drive in the QEMU command line, found {len(drives)}")
    swapped = list(argv)
    swapped[drives[0] + 1] = f"file={disk},if=virtio,format=raw,cache=writeback"
    return swapped
