"""The facts of the machine a benchmark ran on: cores, CPU, memory, accelerator, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from hearth import __version__
from hearth.control.quotas import host_memory_mib
from hearth.tools import require_tool
from hearth.vm.accel import Accel


@dataclass(frozen=True, kw_only=True)
class MachineFacts:
    """What a reader needs to compare figures across machines."""

    cores: int
    cpu_model: str
    memory_mib: int
    accel: str  # "kvm" or "tcg"
    accel_reason: str
    qemu: str
    kernel: str
    os: str
    python: str
    hearth: str
    load_average: str  # 1, 5 and 15 min when the run started: other work skews every figure

    @classmethod
    def collect(cls, accel: Accel) -> MachineFacts:
        """Read the facts of this machine; ``accel`` is what the backend chose."""
        return cls(
            cores=os.cpu_count() or 1,
            cpu_model=_cpu_model(),
            memory_mib=host_memory_mib(),
            accel=accel.name,
            accel_reason=accel.reason,
            qemu=qemu_version(),
            kernel=platform.release(),
            os=_os_name(),
            python=platform.python_version(),
            hearth=__version__,
            load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()),
        )

    def to_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return asdict(self)


def qemu_version() -> str:
    """The first line of ``qemu-system-x86_64 --version``."""
    try:
        out = subprocess.run(
            [require_tool("qemu-system-x86_64"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()
