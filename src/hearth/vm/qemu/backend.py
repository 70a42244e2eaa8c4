"""QemuBackend: QEMU processes with qcow2 overlays, QMP control and snapshot-restore starts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

from hearth.errors import HearthError, InvalidInput, SnapshotError, VmError, VmProcessExited
from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.network.namespace import NetworkSlot, create_namespace, delete_namespace, names_for
from hearth.network.pool import DEFAULT_POOL, SlotPool
from hearth.tools import require_tool, tail
from hearth.vm.claim import claim_agent, new_agent_token
from hearth.vm.qemu.accel import Accel, detect_accel
from hearth.vm.qemu.command import VmPaths, qemu_argv
from hearth.vm.qemu.disk_keys import DiskKey, key_pipe
from hearth.vm.qemu.disks import Overlays
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.records import read_record, vm_from_record, write_record, write_token
from hearth.vm.qemu.templates import Template, TemplateStore, template_key
from hearth.vm.readiness import (
    COLD_BOOT_DEADLINE_S,
    RESTORE_DEADLINE_S,
    Deadline,
    wait_until_healthy,
)
from hearth.vm.types import BootMode, NetworkMode, Vm, VmSpec, VmState

_log = get_logger("vm.qemu")
_STOP_GRACE_S = 3.0
DEFAULT_RUN_ROOT = Path("/run/hearth")
_SAVE_DEADLINE_S = 120.0


def new_vm_id() -> str:
    """A fresh VM id."""
    return f"vm-{uuid.uuid4()}"


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class QemuBackend:
    """Runs VMs as QEMU processes (KVM where usable, TCG otherwise)."""

    name = "qemu"

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
        self.binary = require_tool("qemu-system-x86_64")
        require_tool("qemu-img")
        self.accel = accel or detect_accel()
        self.vms_dir = state_dir / "vms"
        # Short (unix socket paths < 108 bytes) and private to this state dir.
        self.run_dir = (
            run_dir
            or DEFAULT_RUN_ROOT / hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
        )
        self.pool = SlotPool(cidr=network_pool, claims_dir=state_dir / "net" / "slots")
        self._networks: dict[str, NetworkSlot] = {}
        self.templates = TemplateStore(template_dir or state_dir / "templates")
        self.use_templates = use_templates
        self.cold_deadline_s = cold_deadline_s
        self.restore_deadline_s = restore_deadline_s
        # Off only to measure what encryption costs (docs/benchmarks.md): see disk_keys.py.
        self.encrypt_disks = encrypt_disks
        self._overlays = Overlays()
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}

    def _paths(self, vm_id: str, workdir: Path) -> VmPaths:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return VmPaths(workdir=workdir, run_dir=self.run_dir, vm_id=vm_id)

    # ---- create -------------------------------------------------------------------------

    async def create(
        self,
        image: ImageDir,
        spec: VmSpec,
        *,
        vm_id: str | None = None,
        boot_mode: BootMode | None = None,
        claim: bool = True,
    ) -> Vm:
        """Start a VM (restored from a template when possible), healthy and, unless told
        otherwise (warm-pool VMs are claimed when handed out), claimed with its own token."""
        if spec.network is NetworkMode.NETNS and spec.allow_egress:
            raise InvalidInput("network mode netns does not offer guest egress yet; use user")
        vm_id = vm_id or new_vm_id()
        want_restore = boot_mode is not BootMode.COLD and self.use_templates
        if want_restore:
            template: Template | None = None
            try:
                template = await self._template_for(image, spec)
                return await self._start(vm_id, image, spec, template=template, claim=claim)
            except HearthError as exc:
                _log.warning(
                    "restore_failed_cold_boot_instead", vm_id=vm_id, error=exc.message[:500]
                )
                if template is not None and _template_is_bad(exc):
                    # A template that cannot be restored is rebuilt on the next create.
                    self.templates.discard(template)
        return await self._start(vm_id, image, spec, template=None, claim=claim)

    async def claim(self, vm: Vm) -> str:
        """Claim an unclaimed (pooled) VM's agent with a fresh token of its own."""
        if vm.token is not None:
            raise VmError(f"VM {vm.id} is already claimed")
        vm.token = await self._claim(vm)
        if vm.workdir is not None:
            self._write_token(vm.workdir, vm.token)
        return vm.token

    def alive(self, vm: Vm) -> bool:
        """True while the VM's QEMU process runs."""
        return bool(vm.pid and vm.workdir and _is_our_process(vm.pid, vm.workdir))

    async def reap(self, keep: set[str]) -> list[str]:
        """Destroy every VM, work dir, namespace and slot of this backend not in ``keep``."""
        reaped: list[str] = []
        if self.vms_dir.is_dir():
            for workdir in sorted(self.vms_dir.iterdir()):
                if workdir.name in keep:
                    continue
                vm = vm_from_record(workdir, backend=self.name) or Vm(
                    id=workdir.name, spec=VmSpec(), backend=self.name, workdir=workdir
                )
                vm.state = VmState.FAILED
                await self.destroy(vm)
                reaped.append(vm.id)
        for staging in self.templates.abandoned_builds():
            for pid in _pids_running_from(staging):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(staging, ignore_errors=True)
            reaped.append(staging.name)
        if self.run_dir.is_dir():
            for sock in self.run_dir.glob("*.qmp"):
                if sock.stem not in keep:
                    sock.unlink(missing_ok=True)
        for index, owner in self.pool.claims().items():
            if owner not in keep:
                netns, host_veth = names_for(owner)
                slot = self.pool.addresses(index)
                delete_namespace(NetworkSlot(netns=netns, host_veth=host_veth, slot=slot))
                self.pool.release(index, owner)
                reaped.append(owner)
        return sorted(set(reaped))

    _write_token = staticmethod(write_token)

    async def _template_for(self, image: ImageDir, spec: VmSpec) -> Template:
        key = template_key(image, spec, self.accel)

        async def build(directory: Path) -> None:
            await self._build_template(image, spec, directory)

        template, built = await self.templates.ensure(
            key,
            origin=f"{image.path.resolve()}:{spec.size_key}:{spec.network.value}",
            build=build,
        )
        if built:
            _log.info("template_ready", key=key, size=spec.size_key)
        return template

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
            self._delete_network(vm_id, None)
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
                network = self._create_network(vm_id)
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
                with paths.stderr.open("wb") as stderr:
                    proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=stderr,
                        start_new_session=True,
                        pass_fds=() if key_fd is None else (key_fd,),
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
            await wait_until_healthy(
                vm.agent_url,
                vm_id=vm_id,
                deadline=deadline,
                exit_status=lambda: proc.returncode,
                console_tail=lambda: self.console_tail(vm),
            )
            if claim:
                vm.token = await self._claim(vm)
                if record:
                    self._write_token(paths.workdir, vm.token)
            vm.time_to_healthy_s = time.monotonic() - started
            vm.ready_at = time.time()
            vm.move_to(VmState.READY)
        except BaseException as exc:
            vm.error = exc.message if isinstance(exc, HearthError) else type(exc).__name__
            if vm.state is not VmState.FAILED:
                vm.move_to(VmState.FAILED)
            await self.destroy(vm)
            raise
        _log.info(
            "vm_ready",
            vm_id=vm_id,
            boot_mode=vm.boot_mode.value,
            time_to_healthy_s=round(vm.time_to_healthy_s, 3),
        )
        if record:
            self._watchers[vm_id] = asyncio.create_task(self._watch(vm, proc))
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

    async def _claim(self, vm: Vm) -> str:
        """Give the VM's agent its own token, fresh clock and reseeded randomness."""
        if vm.agent_url is None:
            raise VmError(f"VM {vm.id} has no agent address")
        token = new_agent_token()
        await claim_agent(vm.id, vm.agent_url, token)
        return token

    def _create_network(self, vm_id: str) -> NetworkSlot:
        slot = self.pool.claim(vm_id)
        try:
            network = create_namespace(vm_id, slot)
        except BaseException:
            self.pool.release(slot.index, vm_id)
            raise
        self._networks[vm_id] = network
        return network

    def _delete_network(self, vm_id: str, record: dict[str, object] | None) -> None:
        network = self._networks.pop(vm_id, None)
        if network is None and record and record.get("slot") is not None:
            netns, host_veth = names_for(vm_id)
            slot = self.pool.addresses(int(str(record["slot"])))
            network = NetworkSlot(netns=netns, host_veth=host_veth, slot=slot)
        if network is not None:
            delete_namespace(network)
            self.pool.release(network.slot.index, vm_id)

    # ---- watch, pause, resume -------------------------------------------------------------

    async def _watch(self, vm: Vm, proc: asyncio.subprocess.Process) -> None:
        status = await proc.wait()
        if vm.state in (VmState.STOPPING, VmState.DESTROYED):
            return
        vm.error = (
            f"VM {vm.id}: QEMU exited with status {status}; console:\n{self.console_tail(vm, 15)}"
        )
        vm.move_to(VmState.FAILED)
        _log.warning("vm_process_exited", vm_id=vm.id, status=status)

    async def wait_exit(self, vm: Vm) -> None:
        """Return once the VM's watcher has seen its process exit."""
        watcher = self._watchers.get(vm.id)
        if watcher is not None:
            await asyncio.shield(watcher)

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
            if vm is not None and vm.pid and _is_our_process(vm.pid, workdir):
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

    async def destroy(self, vm: Vm) -> None:
        """Stop QEMU (SIGTERM, then SIGKILL), remove overlay, sockets, pidfile; idempotent."""
        if vm.state is VmState.DESTROYED:
            return
        if vm.state is not VmState.STOPPING:
            vm.move_to(VmState.STOPPING)
        errors: list[str] = []
        try:
            await self._stop_process(vm)
        except (OSError, VmError) as exc:
            errors.append(f"stop: {exc}")
        try:
            self._delete_network(vm.id, read_record(vm.workdir) if vm.workdir else None)
        except (OSError, VmError) as exc:
            errors.append(f"network: {exc}")
        watcher = self._watchers.pop(vm.id, None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if vm.workdir is not None:
            self._paths(vm.id, vm.workdir).qmp.unlink(missing_ok=True)
        if vm.workdir is not None and vm.workdir.parent == self.vms_dir:
            try:
                shutil.rmtree(vm.workdir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"remove {vm.workdir}: {exc.strerror}")
        vm.move_to(VmState.DESTROYED)
        _log.info("vm_destroyed", vm_id=vm.id)
        if errors:
            raise VmError(f"VM {vm.id} destroyed with errors: {'; '.join(errors)}")

    async def _stop_process(self, vm: Vm) -> None:
        proc = self._procs.pop(vm.id, None)
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            return
        # Not our child (e.g. found again after a controller restart): signal it by PID, if ours.
        if vm.pid and vm.workdir and _is_our_process(vm.pid, vm.workdir):
            os.kill(vm.pid, signal.SIGTERM)
            deadline = Deadline.after(_STOP_GRACE_S)
            while _is_our_process(vm.pid, vm.workdir) and not deadline.expired:
                await asyncio.sleep(0.05)
            if _is_our_process(vm.pid, vm.workdir):
                os.kill(vm.pid, signal.SIGKILL)


def _template_is_bad(exc: HearthError) -> bool:
    """Whether a failed restore blames the template (not load, a deadline or a port clash)."""
    if isinstance(exc, SnapshotError):
        return True
    return isinstance(exc, VmProcessExited) and "forwarding" not in exc.message


def _pids_running_from(directory: Path) -> list[int]:
    """Live QEMU processes whose command line names ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_our_process(int(entry.name), directory):
            try:
                if b"qemu-system" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _is_our_process(pid: int, workdir: Path) -> bool:
    """True when ``pid`` is alive and is the QEMU running from ``workdir`` (not a reused PID)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return str(workdir).encode() in cmdline
