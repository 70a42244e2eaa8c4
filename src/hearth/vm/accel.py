"""Choosing QEMU's accelerator: KVM where /dev/kvm really works, TCG otherwise (e.g. PVM hosts)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Accel:
    """The accelerator QEMU will use and why."""

    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def cpu_model(self) -> str:
        """The -cpu model that works with this accelerator."""
        return "host" if self.name == "kvm" else "max"


def detect_accel(
    *,
    override: str = "auto",
    kvm_device: Path = Path("/dev/kvm"),
    sys_module: Path = Path("/sys/module"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> Accel:
    """Pick KVM only when /dev/kvm is usable with hardware virtualization (not PVM-only)."""
    if override in ("kvm", "tcg"):
        return Accel(override, f"forced by HEARTH_QEMU_ACCEL={override}")
    if not kvm_device.exists():
        return Accel("tcg", f"{kvm_device} does not exist")
    if not os.access(kvm_device, os.R_OK | os.W_OK):
        return Accel("tcg", f"{kvm_device} is not readable and writable")
    if (sys_module / "kvm_pvm").exists():
        # PVM cannot run a stock kernel through QEMU: it stops with an emulation failure.
        return Accel("tcg", f"{kvm_device} is backed by kvm_pvm (PVM-only), which QEMU cannot use")
    try:
        flags = cpuinfo.read_text()
    except OSError:
        flags = ""
    if " vmx" not in flags and " svm" not in flags:
        return Accel("tcg", "the CPU reports neither vmx nor svm")
    return Accel("kvm", f"{kvm_device} is usable with hardware virtualization")
