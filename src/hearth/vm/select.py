"""Which VMM runs the VMs (``HEARTH_VMM``): whether it can run on this host, and opening it.

The one place outside the backends themselves that names a concrete backend class. Callers get
a ``VmBackend``; a VMM that cannot run here is refused up front with the exact reason (no
binary, no usable KVM, the wrong network mode, a default lifetime action it cannot carry out),
so ``hearth serve`` never fails later.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hearth.config import Settings
from hearth.errors import ConfigError, HearthError
from hearth.tools import require_tool
from hearth.vm.accel import Accel, detect_accel
from hearth.vm.backend import VmBackend
from hearth.vm.firecracker.backend import FC_COLD_BOOT_DEADLINE_S, FirecrackerBackend
from hearth.vm.firecracker.process import require_firecracker
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.readiness import COLD_BOOT_DEADLINE_S
from hearth.vm.types import LifetimeAction


class Vmm(StrEnum):
    """The VMMs Hearth can run VMs with."""

    QEMU = "qemu"
    FIRECRACKER = "firecracker"


_BACKENDS: dict[Vmm, type[VmBackend]] = {Vmm.QEMU: QemuBackend, Vmm.FIRECRACKER: FirecrackerBackend}


@dataclass(frozen=True)
class VmmCheck:
    """Whether one VMM can run on this host, with the accelerator it would use and why not."""

    vmm: Vmm
    ok: bool
    accel: Accel
    problems: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """What stops it, or what it would run with."""
        if self.problems:
            return "; ".join(self.problems)
        return f"runs with {self.accel.name} ({self.accel.reason})"

    def to_dict(self) -> dict[str, object]:
        """The JSON shape ``/health`` shows."""
        return {"ok": self.ok, "accel": self.accel.name, "reason": self.reason}


def check_vmm(settings: Settings, vmm: Vmm | None = None) -> VmmCheck:
    """Can ``vmm`` (default: the configured one) run here with these settings?"""
    vmm = vmm or Vmm(settings.vmm)
    problems = _unsupported_defaults(settings, vmm)
    if vmm is Vmm.QEMU:
        accel = detect_accel(override=settings.qemu_accel)
        for tool in ("qemu-system-x86_64", "qemu-img"):
            try:
                require_tool(tool)
            except HearthError as exc:
                problems.append(exc.message)
        return VmmCheck(vmm, not problems, accel, tuple(problems))
    # Firecracker runs on KVM only: HEARTH_QEMU_ACCEL does not apply to it.
    accel = detect_accel()
    try:
        require_firecracker(settings.firecracker_binary)
    except HearthError as exc:
        problems.append(exc.message)
    if accel.name != "kvm":
        problems.append(f"firecracker needs a usable /dev/kvm, and here {accel.reason}")
    if settings.network_mode != "netns":
        problems.append("firecracker VMs need HEARTH_NETWORK_MODE=netns (a tap per VM)")
    return VmmCheck(vmm, not problems, accel, tuple(problems))


def _unsupported_defaults(settings: Settings, vmm: Vmm) -> list[str]:
    """The default lifetime actions (``HEARTH_VM_*_ACTION``) that ``vmm`` cannot carry out:
    every CLI VM created without its own would get a lifetime that never ends."""
    if _BACKENDS[vmm].can_hibernate:
        return []
    defaults = {
        "HEARTH_VM_TIMEOUT_ACTION": settings.vm_timeout_action,
        "HEARTH_VM_IDLE_ACTION": settings.vm_idle_action,
    }
    return [
        f"{name}=hibernate, but {vmm.value} cannot hibernate VMs (choose pause or destroy)"
        for name, action in defaults.items()
        if action == LifetimeAction.HIBERNATE
    ]


def open_backend(settings: Settings) -> VmBackend:
    """The configured VMM's backend; ConfigError naming why when it cannot run here."""
    check = check_vmm(settings)
    if not check.ok:
        raise ConfigError(f"HEARTH_VMM={check.vmm.value} cannot run on this host: {check.reason}")
    cold_s = settings.cold_boot_deadline_s  # 0: each VMM's own deadline
    if check.vmm is Vmm.FIRECRACKER:
        return FirecrackerBackend(
            state_dir=settings.state_dir,
            firecracker=settings.firecracker_binary,
            accel=check.accel,
            network_pool=settings.network_pool,
            cold_deadline_s=cold_s or FC_COLD_BOOT_DEADLINE_S,
        )
    return QemuBackend(
        state_dir=settings.state_dir,
        accel=check.accel,
        network_pool=settings.network_pool,
        template_dir=settings.template_dir,
        cold_deadline_s=cold_s or COLD_BOOT_DEADLINE_S,
    )
