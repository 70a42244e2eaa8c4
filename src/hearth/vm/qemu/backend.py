"""QemuBackend: QEMU processes with qcow2 overlays, QMP control and snapshot-restore starts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import shlex
import shutil
import time
from dataclasses import replace
from pathlib import Path

from hearth.errors import InvalidInput, NotSupported, VmError
from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.network.namespace import NetworkSlot
from hearth.network.pool import DEFAULT_POOL
from hearth.tools import require_tool
from hearth.vm.accel import Accel, detect_accel
from hearth.vm.claim import new_agent_token
from hearth.vm.host import free_local_port, stop_child
from hearth.vm.lifecycle import BackendLifecycle
from hearth.vm.qemu import hibernation, records, volumes
from hearth.vm.qemu.command import VmPaths, qemu_argv
from hearth.vm.qemu.disk_keys import DiskKey, key_pipe
from hearth.vm.qemu.disks import Overlays
from hearth.vm.qemu.hibernation import DiskLayer
from hearth.vm.qemu.host import console_text, host_leftovers, qemu_runs, reap_leftovers, running_vms
from hearth.vm.qemu.incoming import finish_restore, run_incoming
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.network import QemuNetworks
from hearth.vm.qemu.process import spawn_qemu, stop_adopted
from hearth.vm.qemu.records import read_record, recorded_layers, vm_from_record, write_record
from hearth.vm.qemu.templates import Template, TemplateStore, build_vm_id, template_key
from hearth.vm.readiness import COLD_BOOT_DEADLINE_S, RESTORE_DEADLINE_S, Deadline
from hearth.vm.saved_files import state_path
from hearth.vm.types import NetworkMode, Vm, VmSpec, VmState, Volume

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
        self._kept_dir = state_dir / "kept"  # failed wakes' files, until their VM is deleted

    def _paths(self, vm_id: str, workdir: Path) -> VmPaths:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return VmPaths(workdir=workdir, run_dir=self.run_dir, vm_id=vm_id)

    # ---- create -------------------------------------------------------------------------

    def _admit(self, image: ImageDir, spec: VmSpec, vm_id: str) -> str:
        if spec.network is NetworkMode.NETNS and spec.allow_egress:
            raise InvalidInput("network mode netns does not offer guest egress yet; use user")
        return vm_id

    def alive(self, vm: Vm) -> bool:
        """True while the VM's QEMU process runs (its console log is kept capped meanwhile)."""
        return bool(vm.pid and vm.workdir and qemu_runs(vm.pid, self._paths(vm.id, vm.workdir)))

    def _found_vm(self, workdir: Path) -> Vm | None:
        return vm_from_record(workdir, backend=self.name)

    async def _reap_leftovers(self, keep: set[str]) -> list[str]:
        """Template builds whose builder died (and their QEMU), QMP sockets, network slots."""
        return await reap_leftovers(self.templates, self.run_dir, self.networks, keep)

    def _host_leftovers(self) -> list[str]:
        """QEMU processes of the VMs' or templates' dirs, QMP sockets, claimed network slots."""
        return host_leftovers((self.vms_dir, self.templates.root), self.run_dir, self.networks)

    async def _template_for(self, image: ImageDir, spec: VmSpec) -> Template:
        async def build(directory: Path) -> None:
            await self._build_template(image, spec, directory)

        key_of = functools.partial(template_key, image, spec, self.accel)
        return await self._ensure_template(key_of, image=image, build=build, spec=spec)

    async def _build_template(self, image: ImageDir, spec: VmSpec, directory: Path) -> None:
        """Boot a VM into ``directory``, wait healthy (unclaimed), save disk and memory state."""
        vm_id = build_vm_id(directory)
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
                uri = f"exec:cat > {shlex.quote(str(partial))}"
                await monitor.execute("migrate", {"uri": uri})
                await monitor.wait_migration(deadline=Deadline.after(_SAVE_DEADLINE_S))
                partial.rename(directory / "state.bin")
            finally:
                await monitor.close()
        finally:
            # On success and on failure (or cancellation): no process, network or socket stays.
            await self._stop_process(vm)
            await self.networks.delete(vm_id, None)
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
        vm = self._new_vm(vm_id, spec, paths.workdir, template=template)
        try:
            # qemu-img runs in a thread: the event loop keeps serving other creates and requests.
            layers: tuple[DiskLayer, ...] = (DiskLayer(image.rootfs, "raw"),)
            if template:
                layers = (DiskLayer(template.overlay, "qcow2"), *layers)
            # QEMU opens the files pinned now, so a rollout renaming a new image over these
            # paths changes nothing under the VM, nor under what a hibernation saves it on.
            pin = hibernation.pin_at_start if record else None  # not a template being built
            pinned = await asyncio.to_thread(pin, paths.workdir, image, layers) if pin else None
            run_image, run_layers = (pinned.image, pinned.layers) if pinned else (image, layers)
            # The VM's own layer gets a key of its own, known afterwards only to its QEMU and,
            # sealed, to the VM's row (what a hibernated VM wakes with).
            key = DiskKey.generate() if encrypt_disk and self.encrypt_disks else None
            vm.disk_bytes = await asyncio.to_thread(
                self._overlays.create,
                layers[0].path,
                paths.overlay,
                backing_format=layers[0].fmt,
                key=key,
            )
            vm.disk_key = key.passphrase if key else None
            proc = await self._launch(
                vm,
                paths,
                run_image,
                run_layers,
                incoming_state=template.state if template else None,
                record=record,
            )
            started = time.monotonic()
            if template:
                await finish_restore(vm, paths, proc, deadline_s=self.restore_deadline_s)
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

    async def _launch(
        self,
        vm: Vm,
        paths: VmPaths,
        image: ImageDir,
        layers: tuple[DiskLayer, ...],
        *,
        incoming_state: Path | None = None,
        wake: bool = False,
        record: bool = True,
    ) -> asyncio.subprocess.Process:
        """Give ``vm`` its network and start its QEMU on the overlay in ``paths`` over
        ``layers`` (booting); ``wake``: a hibernated VM's state is to come in."""
        port: int | None = None
        network: NetworkSlot | None = None
        if vm.spec.network is NetworkMode.NETNS:
            network = await self.networks.create(vm.id, vm.spec.guest_forwards)
            vm.agent_url = network.agent_url
        else:
            port = free_local_port()
            vm.agent_url = f"http://127.0.0.1:{port}"
            vm.ports = {guest: free_local_port() for guest in vm.spec.forward_ports}
        # Others may remove an empty runtime dir while the overlay was being made.
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = DiskKey(vm.disk_key) if vm.disk_key else None
        with contextlib.ExitStack() as pipes:
            key_fd = pipes.enter_context(key_pipe(key))
            # A woken VM gets its volumes back at start, each key on its own pipe.
            woken = vm.volumes if wake else []
            slotted = volumes.in_slot(vm.spec, woken)
            fds = [pipes.enter_context(key_pipe(DiskKey(v.key))) for v in woken]
            extra = [
                arg
                for i, v in enumerate(woken)
                for arg in volumes.wake_argv(i, v, fds[i] or -1, slot=i == slotted)
            ]
            argv = qemu_argv(
                binary=self.binary,
                vm_id=vm.id,
                image=image,
                spec=vm.spec,
                accel=self.accel,
                paths=paths,
                host_port=port,
                extra_ports=vm.ports,
                network=network,
                incoming_state=incoming_state,
                disk_key_fd=key_fd,
                layers=layers,
                wake=wake,
                extra=extra,
                slot_volume=slotted,
            )
            passed = tuple(fd for fd in (key_fd, *fds) if fd is not None)
            proc = await spawn_qemu(argv, stderr=paths.stderr, pass_fds=passed)
        self._procs[vm.id] = proc
        vm.pid = proc.pid
        if record:
            write_record(vm, paths, port, network, image=image, layers=layers)
        vm.move_to(VmState.BOOTING)
        _log.info("vm_booting", vm_id=vm.id, boot_mode=vm.boot_mode.value, pid=proc.pid)
        return proc

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
        monitor = await Monitor.connect(
            vm.id, self._paths(vm.id, self._workdir(vm)).qmp, deadline=Deadline.after(5)
        )
        try:
            await monitor.execute(command)
        finally:
            await monitor.close()

    # ---- hibernate, wake -------------------------------------------------------------------

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """Save the VM's memory and device state, encrypted under ``state_key``, into its work
        dir and end its QEMU. A failed save leaves the VM as it was."""
        paths = self._paths(vm.id, self._workdir(vm))
        layers = recorded_layers(read_record(paths.workdir) or {})
        if layers is None:
            raise NotSupported(
                f"VM {vm.id} was started by an older controller, which did not record its disk "
                "layers; it cannot be hibernated (destroy and create it again)"
            )
        was, started = vm.state, time.monotonic()
        vm.move_to(VmState.HIBERNATING)
        try:
            monitor = await Monitor.connect(vm.id, paths.qmp, deadline=Deadline.after(5))
        except BaseException:
            vm.state = was
            raise
        try:
            pinned = await asyncio.to_thread(hibernation.pin, paths.workdir, *layers)
            await monitor.execute("stop")
            size = await hibernation.save(
                monitor,
                socket=paths.migration,
                target=state_path(paths.workdir),
                key=state_key,
                deadline_s=_SAVE_DEADLINE_S,
            )
        except BaseException:
            if was is not VmState.PAUSED:
                with contextlib.suppress(VmError):
                    await monitor.execute("cont")
            vm.state = was
            raise
        finally:
            await monitor.close()
        # The watcher must not take the end of this QEMU for a crash.
        watcher = self._watchers.pop(vm.id, None)
        if watcher is not None:
            watcher.cancel()
        await self._end_process(vm, paths)
        write_record(vm, paths, None, None, image=pinned.image, layers=pinned.layers)
        vm.move_to(VmState.HIBERNATED)
        _log.info(
            "vm_state_saved",
            vm_id=vm.id,
            state_bytes=size,
            seconds=round(time.monotonic() - started, 3),
        )

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """Start a hibernated VM's QEMU on its pinned image and layers, stream its saved state
        in, drop the state file (the disk moves on from here), run it and wait for its agent.
        SavedStateCorrupt when the state is missing or does not open: the work dir is then
        moved aside, kept for inspection, and the message says where. Any other failure
        leaves the VM hibernated as it was."""
        paths = self._paths(vm.id, self._workdir(vm))
        started = time.monotonic()
        try:
            source = hibernation.check_saved(paths.workdir)
            image, layers, slot_mib = records.saved_disks(paths.workdir, vm.id)
            # The saved devices are the ones it started with, whatever the settings say now.
            vm.spec = replace(vm.spec, volume_slot_mib=slot_mib)
            proc = await self._launch(vm, paths, image, layers, wake=True)
            deadline = Deadline.after(self.restore_deadline_s)
            await hibernation.load(paths, proc, source, state_key, deadline=deadline)
            await run_incoming(
                vm, paths, proc, deadline_s=self.restore_deadline_s, then=source.unlink
            )
            await self._until_ready(
                vm,
                started=started,
                deadline=deadline,
                exit_status=lambda: proc.returncode,
                token=None,
            )
        except BaseException as exc:
            await self._after_failed_wake(vm, paths, exc)
            raise
        self._watch(vm, proc.wait())
        return vm

    @property
    def prototypes(self) -> list[str]:
        """The encrypted prototypes this process has made (``Overlays.made``)."""
        return self._overlays.made()

    async def _warm(self, template: Template) -> None:
        if self.encrypt_disks:  # the prototype of the overlays restored from it (luks.py)
            self.vms_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            await asyncio.to_thread(self._overlays.prepare, template.overlay, "qcow2", self.vms_dir)

    async def settle_wake(self, vm: Vm) -> VmState:
        """See ``VmBackend.settle_wake``: the state file decides whether the guest ran."""
        paths = self._paths(vm.id, self._workdir(vm))
        if state_path(paths.workdir).is_file():
            await self._end_process(vm, paths)
            return VmState.HIBERNATED
        if not self.alive(vm):
            return VmState.FAILED
        await self.pause(vm)
        return VmState.PAUSED

    async def _after_failed_wake(self, vm: Vm, paths: VmPaths, exc: BaseException) -> None:
        """End what a wake started; keep the saved state (moved aside when it is corrupt)."""
        await self._end_process(vm, paths)
        hibernation.settle_failed_wake(vm, self._kept_dir, exc)

    async def _end_process(self, vm: Vm, paths: VmPaths) -> None:
        """Stop the VM's QEMU and free its network and sockets, keeping its work dir."""
        await self._stop_process(vm)
        await self.networks.delete(vm.id, read_record(paths.workdir))
        paths.qmp.unlink(missing_ok=True)
        paths.migration.unlink(missing_ok=True)
        vm.pid = None

    def _workdir(self, vm: Vm) -> Path:
        if vm.workdir is None:
            raise VmError(f"VM {vm.id} has no work directory")
        return vm.workdir

    # ---- volumes ----------------------------------------------------------------------------

    async def create_volume(self, path: Path, size_mib: int, key: bytes) -> None:
        """A blank LUKS-encrypted qcow2 of ``size_mib`` (a re-keyed prototype, in a thread)."""
        await asyncio.to_thread(self._overlays.create_volume, path, size_mib, DiskKey(key))

    async def prepare_volumes(self, directory: Path, size_mib: int) -> None:
        """Make the encrypted prototype of ``size_mib`` volumes now (in a thread)."""
        await asyncio.to_thread(self._overlays.prepare_volume, directory, size_mib)

    async def attach_volume(self, vm: Vm, volume: Volume) -> str:
        """Put ``volume`` in the VM's volume slot if it fits a free one, else hot-plug it at
        the next PCI slot (over QMP); the serial the guest finds it by."""
        paths = self._paths(vm.id, self._workdir(vm))
        monitor = await Monitor.connect(vm.id, paths.qmp, deadline=Deadline.after(5))
        try:
            serial = await volumes.attach(monitor, vm.spec, vm.volumes, volume)
        finally:
            await monitor.close()
        vm.volumes.append(volume)
        _log.info("volume_attached", vm_id=vm.id, serial=serial)
        return serial

    # ---- list, console ----------------------------------------------------------------

    async def list_running(self) -> list[Vm]:
        """VMs under this backend's directory whose QEMU process is alive."""
        return running_vms(self.vms_dir, backend=self.name)

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The last lines of the serial console (and QEMU's stderr when it said anything)."""
        return "" if vm.workdir is None else console_text(self._paths(vm.id, vm.workdir), lines)

    # ---- destroy --------------------------------------------------------------------------

    async def _teardown(self, vm: Vm) -> list[str]:
        """Stop QEMU (SIGTERM, then SIGKILL), remove network, socket and work dir."""
        errors: list[str] = []
        try:
            await self._stop_process(vm)
        except (OSError, VmError) as exc:
            errors.append(f"stop: {exc}")
        try:
            await self.networks.delete(vm.id, read_record(vm.workdir) if vm.workdir else None)
        except (OSError, VmError) as exc:
            errors.append(f"network: {exc}")
        if vm.workdir is not None:
            for sock in (paths := self._paths(vm.id, vm.workdir)).qmp, paths.migration:
                sock.unlink(missing_ok=True)
        if vm.workdir is not None and vm.workdir.parent in (self.vms_dir, self._kept_dir):
            try:
                shutil.rmtree(vm.workdir)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError):
                    errors.append(f"remove {vm.workdir}: {exc.strerror}")
        return errors

    async def _stop_process(self, vm: Vm) -> None:
        proc = self._procs.pop(vm.id, None)
        if proc is not None:
            await stop_child(proc)
        elif vm.workdir:
            await stop_adopted(vm.pid, vm.workdir)
