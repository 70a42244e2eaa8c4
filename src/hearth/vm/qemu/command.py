"""The QEMU command line of a VM, identical for a template and its clones except for host paths."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from hearth.images.manifest import ImageDir
from hearth.network.namespace import TAP_NAME, NetworkSlot
from hearth.vm.accel import Accel
from hearth.vm.qemu.disk_keys import drive_key_option, secret_object
from hearth.vm.qemu.hibernation import DiskLayer, drive_backing
from hearth.vm.qemu.options import option_value
from hearth.vm.qemu.volumes import slot_argv
from hearth.vm.types import VmSpec

AGENT_PORT = 8080
GUEST_MAC = "52:54:00:48:45:01"
# Only the kernel's own command line: clones must boot with what their template booted with.
KERNEL_APPEND = "console=ttyS0 root=/dev/vda rw panic=-1 loglevel=4"
CONSOLE_CHARDEV = "console"


def console_chardev(console: Path) -> str:
    """The ``-chardev`` of the serial console: a file QEMU appends to (``append=on``), so the
    host may cut it short under QEMU (``host.cut_console``) and QEMU writes on at its new end."""
    return f"file,id={CONSOLE_CHARDEV},path={option_value(console)},append=on"


@dataclass(frozen=True, kw_only=True)
class VmPaths:
    """Host-side files of one VM: its work directory, and its QMP socket in the runtime dir.

    Unix socket paths must stay under 108 bytes, which deep state dirs (e.g. pytest's) exceed,
    so sockets live in a short runtime directory named after the VM.
    """

    workdir: Path
    run_dir: Path
    vm_id: str

    @property
    def overlay(self) -> Path:
        """The VM's copy-on-write disk."""
        return self.workdir / "disk.qcow2"

    @property
    def qmp(self) -> Path:
        """The QMP socket."""
        return self.run_dir / f"{self.vm_id}.qmp"

    @property
    def migration(self) -> Path:
        """The socket a hibernation's state goes out through, and a wake's comes in by."""
        return self.run_dir / f"{self.vm_id}.mig"

    @property
    def console(self) -> Path:
        """The serial console log."""
        return self.workdir / "console.log"

    @property
    def stderr(self) -> Path:
        """QEMU's own stderr."""
        return self.workdir / "qemu.stderr"

    @property
    def pidfile(self) -> Path:
        """QEMU's pidfile."""
        return self.workdir / "qemu.pid"

    @property
    def record(self) -> Path:
        """The JSON record used to find the VM again after a controller restart."""
        return self.workdir / "vm.json"


def qemu_argv(
    *,
    binary: str,
    vm_id: str,
    image: ImageDir,
    spec: VmSpec,
    accel: Accel,
    paths: VmPaths,
    host_port: int | None,
    extra_ports: dict[int, int] | None = None,
    network: NetworkSlot | None = None,
    incoming_state: Path | None = None,
    disk_key_fd: int | None = None,
    layers: tuple[DiskLayer, ...] = (),
    wake: bool = False,
    extra: list[str] | None = None,
    slot_volume: int | None = None,
) -> list[str]:
    """Build the argv; ``incoming_state`` restores a saved template state instead of booting;
    ``disk_key_fd`` (inherited by QEMU) holds the key of an encrypted overlay, opened on
    ``layers`` (nearest first; none: the backing its header names). ``wake`` wakes a hibernated
    VM: its state comes in on ``paths.migration`` and it stays stopped until told. ``extra``:
    more devices (a woken VM's volumes). The spec's volume slot comes last, reading the
    ``slot_volume``-th of those volumes, or nothing."""
    accel_opt = (
        f"{accel.name},thread=multi" if accel.name == "tcg" and spec.vcpus > 1 else accel.name
    )
    prefix: list[str] = []
    if network is not None:
        # The VM's tap lives in its own namespace; QEMU is started inside it.
        prefix = ["ip", "netns", "exec", network.netns]
        netdev = f"tap,id=net0,ifname={TAP_NAME},script=no,downscript=no"
    else:
        netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{AGENT_PORT}"
        for guest_port, local_port in sorted((extra_ports or {}).items()):
            netdev += f",hostfwd=tcp:127.0.0.1:{local_port}-:{guest_port}"
        for rule in spec.guest_forwards:
            # cmd: spawns one relay per guest connection; a plain tcp: chardev carries only one
            # connection at a time, which a browser's parallel connections hang on.
            netdev += (
                f",guestfwd=tcp:{rule.guest_ip}:{rule.guest_port}"
                f"-cmd:socat - TCP:127.0.0.1:{rule.host_port}"
            )
        if not spec.allow_egress:
            # restrict=on: the guest reaches nothing outside, not even the host; forwards work.
            netdev += ",restrict=on"
    overlay = option_value(paths.overlay)
    drive = f"file={overlay},if=virtio,format=qcow2,cache=writeback,discard=unmap"
    key_object: list[str] = []
    if disk_key_fd is not None:
        # The secret must exist at startup: with -incoming the drive is opened before QMP is up.
        key_object = ["-object", secret_object(f"/dev/fd/{disk_key_fd}")]
        drive += f",{drive_key_option()}"
    if layers:
        drive += f",{drive_backing(layers)}"
    argv = [
        *prefix,
        binary,
        "-name",
        f"hearth-{vm_id}",
        "-machine",
        # A core dump of QEMU would hold the guest's memory (its tokens, credentials) in clear.
        "pc,dump-guest-core=off",
        "-accel",
        accel_opt,
        "-cpu",
        accel.cpu_model,
        "-smp",
        str(spec.vcpus),
        "-m",
        str(spec.mem_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initramfs),
        "-append",
        KERNEL_APPEND,
        *key_object,
        "-drive",
        drive,
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}",
        "-device",
        "virtio-rng-pci",
        "-chardev",
        console_chardev(paths.console),
        "-serial",
        f"chardev:{CONSOLE_CHARDEV}",
        "-qmp",
        f"unix:{option_value(paths.qmp)},server=on,wait=off",
        "-pidfile",
        str(paths.pidfile),
    ]
    argv += extra or []
    argv += slot_argv(spec, slot_volume)
    if incoming_state is not None:
        argv += ["-incoming", f"exec:cat {shlex.quote(str(incoming_state))}"]
    elif wake:
        argv += ["-incoming", f"unix:{paths.migration}", "-S"]
    return argv
