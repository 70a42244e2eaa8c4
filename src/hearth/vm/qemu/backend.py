"""QemuBackend: QEMU processes with qcow2 overlays, QMP control and snapshot-restore starts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

from hearth.errors import HearthError, InvalidInput, SnapshotError, VmError, VmProcessExited
from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.network.namespace import NetworkSlot
from hearth.network.pool import DEFAULT_POOL
from hearth.tools import require_tool, tail
from hearth.vm.accel import Accel, detect_accel
from hearth.vm.claim import new_agent_token
from hearth.vm.host import free_local_port, live_args, stop_child
from hearth.vm.lifecycle import BackendLifecycle
from hearth.vm.qemu.command import VmPaths, qemu_argv
from hearth.vm.qemu.disk_keys import DiskKey, key_pipe
from hearth.vm.qemu.disks import Overlays
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.network import QemuNetworks
from hearth.vm.qemu.process import (
    is_our_process,
    qemu_pids_running_from,
    spawn_qemu,
    stop_adopted,
)
from hearth.vm.qemu.records import read_record, vm_from_record, write_record
from hearth.vm.qemu.templates import Template, TemplateStore, template_key
from hearth.vm.readiness import (
    COLD_BOOT_DEADLINE_S,
    RESTORE_DEADLINE_S,
    Deadline,
)
from hearth.vm.types import BootMode, NetworkMode, Vm, VmSpec, VmState

_log = get_logger("vm.qemu")
DEFAULT_RUN_ROOT = Path("/run/hearth")
_SAVE_DEADLINE_S = 120.0


def qemu_binary() -> str:
    """The QEMU system emulator every QEMU VM runs (ToolMissing when it is not installed)."""
    return require_tool("qemu-system-x86_64")


def runtime_dir(state_dir: Path) -> Path:
    """Where the QEMU VMs of ``state_dir`` keep their sockets unless told otherwise: short
    (unix socket paths stay under 108 bytes) and private to that state dir."""
    return DEFAULT_RUN_ROOT / hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


class QemuBackend(BackendLifecycle[Template]):
    """Runs VMs as QEMU processes (KVM where usable, TCG otherwise)."""

    name = "qemu"
    vmm_label = "QEMU"

    def __init__(
        self,
        *,
        state_dir: Path,
        run_dir: Path | None = None,
        network_pool: str = DEFAULT_POOL,
        template_dir: Path | None = None,
        accel: Accel | None = None,
        use_templates: bool = True,
        cold_deadline_s: float = COLD_BOOT_DEADLINE_S,
        restore_deadline_s: float = RESTORE_DEADLINE_S,
        encrypt_disks: bool = True,
    ) -> None:
        self.binary = qemu_binary()
        require_tool("qemu-img")
        super().__init__(
            state_dir=state_dir,
            templates=TemplateStore(template_dir or state_dir / "templates"),
            use_templates=use_templates,
            cold_deadline_s=cold_deadline_s,
            restore_deadline_s=restore_deadline_s,
        )
        self.accel = accel or detect_accel()
        self.run_dir = run_dir or runtime_dir(state_dir)
        self.networks = QemuNetworks(cidr=network_pool, claims_dir=state_dir / "net" / "slots")
        # Off only to measure what encryption costs (docs/benchmarks.md): see disk_keys.py.
        self.encrypt_disks = encrypt_disks
        self._overlays = Overlays()
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def _paths(self, vm_id: str, workdir: Path) -> VmPaths:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return VmPaths(workdir=workdir, run_dir=self.run_dir, vm_id=vm_id)

    # ---- create -------------------------------------------------------------------------

    def _admit(self, image: ImageDir, spec: VmSpec, vm_id: str) -> str:
        if spec.network is NetworkMode.NETNS and spec.allow_egress:
            raise InvalidInput("network mode netns does not offer guest egress yet; use user")
        return vm_id

    def alive(self, vm: Vm) -> bool:
        """True while the VM's QEMU process runs."""
        return bool(vm.pid and vm.workdir and is_our_process(vm.pid, vm.workdir))

    def _found_vm(self, workdir: Path) -> Vm | None:
        return vm_from_record(workdir, backend=self.name)

    async def _reap_leftovers(self, keep: set[str]) -> list[str]:
        """Template builds whose builder died (and their QEMU), QMP sockets, network slots."""
        reaped: list[str] = []
        for staging in self.templates.abandoned_builds():
            for pid in qemu_pids_running_from(staging):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(staging, ignore_errors=True)
            reaped.append(staging.name)
        if self.run_dir.is_dir():
            for sock in self.run_dir.glob("*.qmp"):
                if sock.stem not in keep:
                    sock.unlink(missing_ok=True)
        return reaped + self.networks.reap(keep)

    def _host_leftovers(self) -> list[str]:
        """QEMU processes running from the VMs' or the templates' directories, QMP sockets in
        the runtime dir, claimed network slots."""
        pids = {
            pid for d in (self.vms_dir, self.templates.root) for pid in qemu_pids_running_from(d)
        }
        found = [f"QEMU process {pid} ({_qemu_name(pid)}) is still running" for pid in sorted(pids)]
        if self.run_dir.is_dir():
            found += [
                f"QMP socket {sock} is still there" for sock in sorted(self.run_dir.glob("*.qmp"))
            ]
        found += [
            f"network slot {index} is still claimed by {owner}"
            for index, owner in sorted(self.networks.pool.claims().items())
        ]
        return found

    async def _template_for(self, image: ImageDir, spec: VmSpec) -> Template:
        key = template_key(image, spec, self.accel)

        async def build(directory: Path) -> None:
            await self._build_template(image, spec, directory)

        origin = f"{image.path.resolve()}:{spec.size_key}:{spec.network.value}"
        return await self._ensure_template(key, origin=origin, build=build, spec=spec)

    async def _build_template(self, image: ImageDir, spec: VmSpec, directory: Path) -> None:
        """Boot a VM into ``directory``, wait healthy (unclaimed), save disk and memory state."""
        vm_id = f"template-{directory.name.lstrip('.')}"
        vm = await self._start(
            vm_id,
            image,
            spec,
            template=None,
            claim=False,
            workdir=directory,
            record=False,
            # Saved unclaimed (no user's token or data yet) and reopened by every restore.
            encrypt_disk=False,
        )
        try:
            monitor = await Monitor.connect(
                vm_id, self._paths(vm_id, directory).qmp, deadline=Deadline.after(10)
            )
            try:
                await monitor.execute("stop")
                partial = directory / "state.bin.partial"
                await monitor.execute("migrate", {"uri": f"exec:cat > {partial}"})
                await monitor.wait_migration(deadline=Deadline.after(_SAVE_DEADLINE_S))
                partial.rename(directory / "state.bin")
            finally:
                await monitor.close()
        finally:
            # On success and on failure (or cancellation): no process, network or socket stays.
            await self._stop_process(vm)
            self.networks.delete(vm_id, None)
            for leftover in ("qemu.pid", "vm.json"):
                (directory / leftover).unlink(missing_ok=True)
            self._paths(vm_id, directory).qmp.unlink(missing_ok=True)

    async def _start(
        self,
        vm_id: str,
        image: ImageDir,
        spec: VmSpec,
        *,
        template: Template | None,
        claim: bool,
        workdir: Path | None = None,
        record: bool = True,
        encrypt_disk: bool = True,
    ) -> Vm:
        paths = self._paths(vm_id, workdir or self.vms_dir / vm_id)
        paths.workdir.mkdir(mode=0o700, parents=True, exist_ok=workdir is not None)
        vm = Vm(
            id=vm_id,
            spec=spec,
            backend=self.name,
            workdir=paths.workdir,
            boot_mode=BootMode.RESTORE if template else BootMode.COLD,
        )
        try:
            # qemu-img runs in a thread: the event loop keeps serving other creates and requests.
            if template:
                backing, backing_format = template.overlay, "qcow2"
            else:
                backing, backing_format = image.rootfs, "raw"
            # The VM's own layer gets a key of its own, known afterwards only to its QEMU.
            key = DiskKey.generate() if encrypt_disk and self.encrypt_disks else None
            vm.disk_bytes = await asyncio.to_thread(
                self._overlays.create,
                backing,
                paths.overlay,
                backing_format=backing_format,
                key=key,
            )
            port: int | None = None
            network: NetworkSlot | None = None
            if spec.network is NetworkMode.NETNS:
                network = self.networks.create(vm_id, spec.guest_forwards)
                vm.agent_url = network.agent_url
            else:
                port = free_local_port()
                vm.agent_url = f"http://127.0.0.1:{port}"
                vm.ports = {guest: free_local_port() for guest in spec.forward_ports}
            # Others may remove an empty runtime dir while the overlay was being made.
            self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with key_pipe(key) as key_fd:
                argv = qemu_argv(
                    binary=self.binary,
                    vm_id=vm_id,
                    image=image,
                    spec=spec,
                    accel=self.accel,
                    paths=paths,
                    host_port=port,
                    extra_ports=vm.ports,
                    network=network,
                    incoming_state=template.state if template else None,
                    disk_key_fd=key_fd,
                )
                proc = await spawn_qemu(
                    argv, stderr=paths.stderr, pass_fds=() if key_fd is None else (key_fd,)
                )
            del key  # from here on only this VM's QEMU holds it
            self._procs[vm_id] = proc
            vm.pid = proc.pid
            if record:
                write_record(vm, paths, port, network)
            vm.move_to(VmState.BOOTING)
            _log.info("vm_booting", vm_id=vm_id, boot_mode=vm.boot_mode.value, pid=proc.pid)
            started = time.monotonic()
            if template:
                await self._finish_restore(vm, paths)
                deadline = Deadline.after(self.restore_deadline_s)
            else:
                deadline = Deadline.after(self.cold_deadline_s)
            await self._until_ready(
                vm,
                started=started,
                deadline=deadline,
                exit_status=lambda: proc.returncode,
                token=new_agent_token() if claim else None,
            )
        except BaseException as exc:
            await self._abandon(vm, exc)
            raise
        if record:
            self._watch(vm, proc.wait())
        return vm

    async def _finish_restore(self, vm: Vm, paths: VmPaths) -> None:
        """Wait for the incoming state, then run the VM; a failure here blames the template,
        unless QEMU could not even set up its port forwards (a port clash, not the template)."""
        try:
            await self._incoming(vm, paths)
        except SnapshotError:
            raise
        except HearthError as exc:
            stderr = ""
            with contextlib.suppress(OSError):
                stderr = tail(paths.stderr.read_text(errors="replace"), 5)
            if "forwarding" in stderr:
                raise VmProcessExited(f"VM {vm.id}: QEMU could not forward: {stderr}") from exc
            raise SnapshotError(f"VM {vm.id}: restore failed: {exc.message} {stderr}") from exc

    async def _incoming(self, vm: Vm, paths: VmPaths) -> None:
        proc = self._procs[vm.id]
        monitor = await Monitor.connect(vm.id, paths.qmp, deadline=Deadline.after(10))
        try:
            deadline = Deadline.after(self.restore_deadline_s)
            while (status := await monitor.status()) == "inmigrate":
                if proc.returncode is not None or deadline.expired:
                    break
                await asyncio.sleep(0.01)
            if proc.returncode is not None:
                raise VmProcessExited(
                    f"VM {vm.id} exited with status {proc.returncode} while restoring: "
                    f"{tail(paths.stderr.read_text(errors='replace'), 5)}"
                )
            if status == "inmigrate":
                raise SnapshotError(f"VM {vm.id}: restore did not finish in time")
            await monitor.execute("cont")
        finally:
            await monitor.close()

    # ---- watch, pause, resume -------------------------------------------------------------

    async def pause(self, vm: Vm) -> None:
        """Stop the vCPUs (QMP ``stop``)."""
        await self._qmp(vm, "stop")
        vm.move_to(VmState.PAUSED)

    async def resume(self, vm: Vm) -> None:
        """Continue the vCPUs (QMP ``cont``)."""
        await self._qmp(vm, "cont")
        vm.move_to(VmState.READY)

    async def _qmp(self, vm: Vm, command: str) -> None:
        if vm.workdir is None:
            raise VmError(f"VM {vm.id} has no work directory")
        monitor = await Monitor.connect(
            vm.id, self._paths(vm.id, vm.workdir).qmp, deadline=Deadline.after(5)
        )
        try:
            await monitor.execute(command)
        finally:
            await monitor.close()

    # ---- list, console ----------------------------------------------------------------

    async def list_running(self) -> list[Vm]:
        """VMs under this backend's directory whose QEMU process is alive."""
        found: list[Vm] = []
        if not self.vms_dir.is_dir():
            return found
        for workdir in sorted(self.vms_dir.iterdir()):
            vm = vm_from_record(workdir, backend=self.name)
            if vm is not None and vm.pid and is_our_process(vm.pid, workdir):
                found.append(vm)
        return found

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The last lines of the serial console (and QEMU's stderr when it said anything)."""
        if vm.workdir is None:
            return ""
        paths = self._paths(vm.id, vm.workdir)
        text = ""
        with contextlib.suppress(OSError):
            text = tail(paths.console.read_text(errors="replace"), lines)
        with contextlib.suppress(OSError):
            stderr = paths.stderr.read_text(errors="replace").strip()
            if stderr:
                text += f"\n[qemu stderr] {tail(stderr, 5)}"
        return text

    # ---- destroy --------------------------------------------------------------------------

    async def _teardown(self, vm: Vm) -> list[str]:
        """Stop QEMU (SIGTERM, then SIGKILL), remove network, socket and work dir."""
        errors: list[str] = []
        try:
            await self._stop_process(vm)
        except (OSError, VmError) as exc:
            errors.append(f"stop: {exc}")
        try:
            self.networks.delete(vm.id, read_record(vm.workdir) if vm.workdir else None)
        except (OSError, VmError) as exc:
            errors.append(f"network: {exc}")
        if vm.workdir is not None:
            self._paths(vm.id, vm.workdir).qmp.unlink(missing_ok=True)
        if vm.workdir is not None and vm.workdir.parent == self.vms_dir:
            try:
                shutil.rmtree(vm.workdir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"remove {vm.workdir}: {exc.strerror}")
        return errors

    async def _stop_process(self, vm: Vm) -> None:
        proc = self._procs.pop(vm.id, None)
        if proc is not None:
            await stop_child(proc)
        elif vm.pid and vm.workdir:
            await stop_adopted(vm.pid, vm.workdir)


def _qemu_name(pid: int) -> str:
    """The ``-name`` QEMU process ``pid`` was started with ("hearth-<VM id>")."""
    args = live_args(pid) or []
    return args[args.index("-name") + 1] if "-name" in args[:-1] else "no -name"
