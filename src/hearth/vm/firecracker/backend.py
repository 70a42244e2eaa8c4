"""FirecrackerBackend: microVMs under Firecracker, cold-booted or restored from snapshot templates.

Per VM: a work directory (record, console, logs), a network from the ``NetworkProvider`` (a tap
in the VM's own netns; by default ``hearth.network``'s, the namespaces and slot pool the QEMU
backend uses too), a copy-on-write root disk (``disks``), and one Firecracker process,
optionally jailed, configured over its API socket (``sequences``). Every resource enters the
VM's record as soon as it exists; teardown reads the record and runs LIFO — process, disk,
jail, network, work directory — collecting errors instead of stopping at the first.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from hearth.errors import (
    BackendError,
    ConfigError,
    Conflict,
    NotAnImage,
    SnapshotError,
    VmError,
)
from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.network.pool import DEFAULT_POOL, SlotPool
from hearth.vm.accel import Accel, detect_accel
from hearth.vm.claim import new_agent_token
from hearth.vm.console_log import cut_console
from hearth.vm.firecracker import disks, payloads, process, sequences
from hearth.vm.firecracker.client import FirecrackerClient
from hearth.vm.firecracker.disks import CowMechanism
from hearth.vm.firecracker.network import (
    GUEST_IDENTITY,
    FirecrackerNetwork,
    NetworkProvider,
    SlotNetworks,
)
from hearth.vm.firecracker.process import FirecrackerProcess, JailerConfig, VmRoot
from hearth.vm.firecracker.records import LOG_FILE, METRICS_FILE, VmFiles, VmRecord
from hearth.vm.firecracker.teardown import teardown_vm
from hearth.vm.firecracker.templates import FcTemplate, FcTemplateStore, template_key
from hearth.vm.host import bytes_on_disk
from hearth.vm.lifecycle import BackendLifecycle
from hearth.vm.readiness import Deadline
from hearth.vm.types import NetworkMode, Vm, VmSpec, VmState, check_transition
from hearth_agent.processes import live_args

_log = get_logger("vm.firecracker")
# Firecracker boots a minimal guest in about a second and restores in milliseconds.
FC_COLD_BOOT_DEADLINE_S = 30.0
FC_RESTORE_DEADLINE_S = 10.0
API_DEADLINE_S = 5.0
_CLOCK_REALTIME = platform.machine() == "x86_64"  # the load option is x86_64-only


class FirecrackerBackend(BackendLifecycle[FcTemplate]):
    """Runs VMs as Firecracker microVMs; needs the binary, a usable /dev/kvm and root."""

    name = "firecracker"
    vmm_label = "firecracker"

    def __init__(
        self,
        *,
        state_dir: Path,
        networks: NetworkProvider | None = None,
        network_pool: str = DEFAULT_POOL,
        jailer: JailerConfig | None = None,
        firecracker: str | None = None,
        accel: Accel | None = None,
        cow: CowMechanism | None = None,
        use_templates: bool = True,
        use_initrd: bool = False,
        metrics: bool = False,
        cold_deadline_s: float = FC_COLD_BOOT_DEADLINE_S,
        restore_deadline_s: float = FC_RESTORE_DEADLINE_S,
    ) -> None:
        super().__init__(
            state_dir=state_dir,
            templates=FcTemplateStore(state_dir / "templates"),
            use_templates=use_templates,
            cold_deadline_s=cold_deadline_s,
            restore_deadline_s=restore_deadline_s,
        )
        self.binary = process.require_firecracker(firecracker)
        self.jailer = jailer
        self.jailer_binary = (
            process.require_firecracker(jailer.binary, name="jailer") if jailer else None
        )
        accel = accel or detect_accel()
        if accel.name != "kvm":
            raise ConfigError(f"firecracker needs a usable /dev/kvm: {accel.reason}")
        self.accel = accel
        if networks is None:
            # The same claims directory as the QEMU backend's: one pool per state dir.
            networks = SlotNetworks(
                pool=SlotPool(cidr=network_pool, claims_dir=state_dir / "net" / "slots"),
                tap_owner=(jailer.uid, jailer.gid) if jailer else None,
            )
        self.networks = networks
        self.cow = disks.choose_mechanism(cow)
        self.use_initrd = use_initrd
        self.metrics = metrics
        self._procs: dict[str, FirecrackerProcess] = {}

    # ---- create -------------------------------------------------------------------------

    def _admit(self, image: ImageDir, spec: VmSpec, vm_id: str) -> str:
        if spec.network is not NetworkMode.NETNS:
            raise VmError(
                f"the firecracker backend supports network mode 'netns' only, not {spec.network}"
            )
        if not image.vmlinux.exists():
            raise NotAnImage(
                f"{image.vmlinux} is missing: Firecracker boots the uncompressed kernel"
            )
        return process.check_vm_id(vm_id)

    def alive(self, vm: Vm) -> bool:
        """True while the VM's Firecracker (or jailer) process runs; its console log is then
        kept under its cap (``cut_console``: Firecracker's stdout appends to it)."""
        if not (vm.pid and process.is_our_process(vm.pid, vm.id)):
            return False
        if vm.workdir is not None:
            cut_console(VmFiles(workdir=vm.workdir).console)
        return True

    def _found_vm(self, workdir: Path) -> Vm | None:
        record = VmRecord.read(VmFiles(workdir=workdir))
        if record is None:
            return None
        return record.to_vm(backend=self.name, workdir=workdir, state=VmState.FAILED)

    async def _reap_leftovers(self, keep: set[str]) -> list[str]:
        """Template builds whose builder died (their VM torn down from its record), networks."""
        reaped: list[str] = []
        for staging in self.templates.abandoned_builds():
            await self._destroy_quietly(
                Vm(id=staging.name, spec=VmSpec(), backend=self.name, workdir=staging / "vm",
                   state=VmState.FAILED)
            )  # fmt: skip
            shutil.rmtree(staging, ignore_errors=True)
            reaped.append(staging.name)
        return reaped + await self.networks.reap(keep)

    def _host_leftovers(self) -> list[str]:
        """Firecracker (or jailer) processes running in a VM root of this backend (a work dir,
        a template build, a jail), jails, claimed network slots. API sockets live in the roots,
        so they go with the work dirs and jails reported."""
        roots = [self.vms_dir, self.templates.root]
        jails: list[Path] = []
        if self.jailer is not None:
            base = self.jailer.chroot_base_dir / Path(self.binary).name  # holds every jail_dir
            roots.append(base)
            jails = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        found = [
            f"firecracker process {pid} (VM {vm_id}) is still running"
            for pid, vm_id in sorted(_firecrackers_in(roots).items())
        ]
        found += [f"jail {jail} is still there" for jail in jails]
        if isinstance(self.networks, SlotNetworks):
            found += [
                f"network slot {index} is still claimed by {owner}"
                for index, owner in sorted(self.networks.pool.claims().items())
            ]
        return found

    def _boot_args(self, network: FirecrackerNetwork) -> str:
        return payloads.boot_args(
            guest_cidr=network.guest_cidr, gateway=network.gateway, with_initrd=self.use_initrd
        )

    async def _template_for(self, image: ImageDir, spec: VmSpec) -> FcTemplate:
        guest = FirecrackerNetwork(netns="-", agent_host="-")
        key_of = functools.partial(
            template_key,
            image,
            spec,
            firecracker=self.binary,
            boot_args=self._boot_args(guest),
            guest_identity=guest.guest_identity,
            use_initrd=self.use_initrd,
        )

        async def build(directory: Path) -> dict[str, Any]:
            return await self._build_template(image, spec, directory)

        return await self._ensure_template(key_of, image=image, build=build, spec=spec)

    async def _build_template(
        self, image: ImageDir, spec: VmSpec, directory: Path
    ) -> dict[str, Any]:
        """Boot unclaimed, wait healthy, pause, snapshot; freeze disk, vmstate and memory."""
        vm_id = f"tpl-{directory.name.lstrip('.')}".replace("_", "-")[:64]
        vm = await self._start(
            vm_id, image, spec, template=None, claim=False, workdir=directory / "vm"
        )
        try:
            record = self._record(vm)
            root = Path(record.root)
            async with FirecrackerClient(record.api_socket) as client:
                files = sequences.SnapshotFiles(vmstate="vmstate", memory="memory")
                meta = await sequences.snapshot(client, files)
            await self._procs.pop(vm.id).stop()
            disk = record.get_disk()
            if disk is None:
                raise SnapshotError(f"template VM {vm_id} has no disk record")
            await disks.freeze_cow_disk_in_thread(disk, directory / "disk.ext4")
            for name in ("vmstate", "memory"):
                shutil.move(root / name, directory / name)
        finally:
            await self._destroy_quietly(vm)
        return meta

    async def _start(
        self,
        vm_id: str,
        image: ImageDir,
        spec: VmSpec,
        *,
        template: FcTemplate | None,
        claim: bool = True,
        workdir: Path | None = None,
    ) -> Vm:
        files = VmFiles(workdir=workdir or self.vms_dir / vm_id)
        if files.workdir.exists():
            raise Conflict(f"VM {vm_id} already exists")
        files.workdir.mkdir(mode=0o700, parents=True)
        vm = self._new_vm(vm_id, spec, files.workdir, template=template)
        root = self._root(vm_id, files)
        try:
            record = self._new_record(vm, root)
            record.write(files)
            network = await self.networks.acquire(
                vm_id, allow_egress=spec.allow_egress, forwards=spec.guest_forwards
            )
            record.network = network.to_dict()
            record.write(files)
            vm.agent_url = network.agent_url
            if template is not None and network.guest_identity != GUEST_IDENTITY:
                raise SnapshotError(f"VM {vm_id}: its guest network differs from the template's")
            root.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            disk = await disks.create_cow_disk_in_thread(
                template.disk if template else image.rootfs,
                workdir=files.workdir,
                name=vm_id,
                mechanism=self.cow,
            )
            record.disk = disk.to_dict()
            record.write(files)
            vm.disk_bytes = bytes_on_disk(disk.cow_file)
            root.stage("rootfs", disk.device, writable=True)
            proc = await FirecrackerProcess.start(
                self._argv(vm_id, network), vm_id=vm_id, root=root, console=files.console,
                stderr=files.stderr,
            )  # fmt: skip
            self._procs[vm_id] = proc
            vm.pid = record.pid = proc.pid
            record.write(files)
            vm.move_to(VmState.BOOTING)
            _log.info("vm_booting", vm_id=vm_id, boot_mode=vm.boot_mode.value, pid=proc.pid)
            started = time.monotonic()
            token = new_agent_token() if claim else None
            await proc.wait_for_api(Deadline.after(API_DEADLINE_S))
            async with FirecrackerClient(root.api_socket) as client:
                deadline = await self._configure(
                    client, vm, root, image, network, template=template, token=token
                )
            await self._until_ready(
                vm,
                started=started,
                deadline=deadline,
                exit_status=lambda: proc.returncode,
                token=token,
            )
        except BaseException as exc:
            await self._abandon(vm, exc)
            if isinstance(exc, OSError):
                raise VmError(f"VM {vm_id}: {exc.strerror or exc} ({exc.filename})") from exc
            raise
        if workdir is None:  # a VM of its own, not a template being built
            self._watch(vm, proc.proc.wait())
        return vm

    def _new_record(self, vm: Vm, root: VmRoot) -> VmRecord:
        record = VmRecord(
            id=vm.id,
            vm_type=vm.spec.vm_type.value,
            vcpus=vm.spec.vcpus,
            mem_mib=vm.spec.mem_mib,
            boot_mode=vm.boot_mode.value,
            created_at=vm.created_at,
            root=str(root.path),
            metrics=self.metrics,
        )
        if self.jailer is not None:
            record.jail_dir = str(self.jailer.jail_dir(self.binary, vm.id))
            record.cgroup_dir = str(self.jailer.cgroup_dir(self.binary, vm.id))
        return record

    async def _configure(
        self,
        client: FirecrackerClient,
        vm: Vm,
        root: VmRoot,
        image: ImageDir,
        network: FirecrackerNetwork,
        *,
        template: FcTemplate | None,
        token: str | None,
    ) -> Deadline:
        """Restore from ``template`` or cold-boot; return the deadline for the agent's health."""
        mmds = payloads.mmds_document(vm_id=vm.id, agent_port=network.agent_port, token=token)
        log_path = root.create_file(LOG_FILE)
        metrics_path = root.create_file(METRICS_FILE) if self.metrics else None
        if template is not None:
            plan = sequences.RestorePlan(
                files=sequences.SnapshotFiles(
                    vmstate=root.stage("snapshot.vmstate", template.vmstate),
                    memory=root.stage("snapshot.mem", template.memory),
                ),
                tap=network.tap, mmds=mmds, clock_realtime=_CLOCK_REALTIME, log_path=log_path,
                metrics_path=metrics_path,
            )  # fmt: skip
            await sequences.restore(client, plan)
            return Deadline.after(self.restore_deadline_s)
        boot = sequences.BootPlan(
            vcpus=vm.spec.vcpus, mem_mib=vm.spec.mem_mib,
            kernel=root.stage("vmlinux", image.vmlinux),
            initrd=root.stage("initrd", image.initramfs) if self.use_initrd else None,
            boot_args=self._boot_args(network), root_drive="rootfs", tap=network.tap,
            guest_mac=network.guest_mac, mmds=mmds, log_path=log_path, metrics_path=metrics_path,
        )  # fmt: skip
        await sequences.configure_and_boot(client, boot)
        return Deadline.after(self.cold_deadline_s)

    def _root(self, vm_id: str, files: VmFiles) -> VmRoot:
        if self.jailer is None:
            return VmRoot(files.workdir)
        return VmRoot(self.jailer.root(self.binary, vm_id), self.jailer)

    def _argv(self, vm_id: str, network: FirecrackerNetwork) -> list[str]:
        if self.jailer is None or self.jailer_binary is None:
            return process.firecracker_argv(binary=self.binary, vm_id=vm_id, netns=network.netns)
        return self.jailer.argv(
            jailer=self.jailer_binary, firecracker=self.binary, vm_id=vm_id,
            netns=network.netns_path,
        )  # fmt: skip

    def _record(self, vm: Vm) -> VmRecord:
        record = VmRecord.read(VmFiles(workdir=vm.workdir)) if vm.workdir else None
        if record is None:
            raise VmError(f"VM {vm.id} has no record (already destroyed?)")
        return record

    # ---- watch, pause, resume -------------------------------------------------------------

    async def pause(self, vm: Vm) -> None:
        """Stop the vCPUs (``PATCH /vm Paused``)."""
        check_transition(vm.id, vm.state, VmState.PAUSED)
        async with FirecrackerClient(self._record(vm).api_socket) as client:
            await sequences.pause(client)
        vm.move_to(VmState.PAUSED)

    async def resume(self, vm: Vm) -> None:
        """Run the vCPUs again (``PATCH /vm Resumed``)."""
        check_transition(vm.id, vm.state, VmState.READY)
        async with FirecrackerClient(self._record(vm).api_socket) as client:
            await sequences.resume(client)
        vm.move_to(VmState.READY)

    # ---- list, console ----------------------------------------------------------------

    async def list_running(self) -> list[Vm]:
        """VMs under this backend's directory whose Firecracker process is alive."""
        found: list[Vm] = []
        if not self.vms_dir.is_dir():
            return found
        for workdir in sorted(self.vms_dir.iterdir()):
            record = VmRecord.read(VmFiles(workdir=workdir))
            if (
                record is None
                or not record.pid
                or not process.is_our_process(record.pid, record.id)
            ):
                continue
            state = VmState.READY
            with contextlib.suppress(BackendError):
                async with FirecrackerClient(record.api_socket, timeout_s=1.0) as client:
                    if await sequences.instance_state(client) == "Paused":
                        state = VmState.PAUSED
            found.append(record.to_vm(backend=self.name, workdir=workdir, state=state))
        return found

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The serial console's last lines, plus Firecracker's own log when it said anything."""
        return VmFiles(workdir=vm.workdir).console_tail(lines) if vm.workdir else ""

    # ---- destroy --------------------------------------------------------------------------

    async def _teardown(self, vm: Vm) -> list[str]:
        """Process, disk, jail, network and work directory, LIFO (``teardown``)."""
        return await teardown_vm(
            vm.id, vm.workdir, proc=self._procs.pop(vm.id, None), pid=vm.pid, networks=self.networks
        )


def _firecrackers_in(roots: list[Path]) -> dict[int, str]:
    """Live firecracker and jailer processes whose working directory (a VM's root) lies under
    one of ``roots``, deleted or not; PID to the ``--id`` they were started with."""
    prefixes = [str(root.resolve()) for root in roots]
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = live_args(int(entry.name))
        if not args or not any(n in Path(args[0]).name for n in ("firecracker", "jailer")):
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(cwd.startswith(f"{p}/") for p in prefixes):
            found[int(entry.name)] = args[args.index("--id") + 1] if "--id" in args[:-1] else "?"
    return found
