"""The per-VM record: what a Firecracker VM holds on the host, written as each part is acquired.

Teardown reads it, so a VM can be destroyed completely after a controller restart or a crash
half-way through ``create`` — every resource is in the record before anything depends on it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.tools import tail_of_file
from hearth.vm.firecracker.disks import CowDisk
from hearth.vm.firecracker.network import FirecrackerNetwork
from hearth.vm.firecracker.process import API_SOCKET
from hearth.vm.host import bytes_on_disk, read_legacy_token
from hearth.vm.types import BootMode, NetworkMode, Vm, VmSpec, VmState, VmType

RECORD_NAME = "vm.json"
LOG_FILE = "firecracker.log"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True, kw_only=True)
class VmFiles:
    """Host-side files of one VM, all inside its work directory."""

    workdir: Path

    @property
    def record(self) -> Path:
        """The JSON record."""
        return self.workdir / RECORD_NAME

    @property
    def console(self) -> Path:
        """The serial console (Firecracker's stdout)."""
        return self.workdir / "console.log"

    @property
    def stderr(self) -> Path:
        """Firecracker's (or the jailer's) stderr."""
        return self.workdir / "firecracker.stderr"

    def console_tail(self, lines: int = 40) -> str:
        """The console's last lines, plus stderr and Firecracker's log when they said anything."""
        text = ""
        with contextlib.suppress(OSError):
            text = tail_of_file(self.console, lines)  # a guest can make it any size
        record = VmRecord.read(self)
        for path in [self.stderr] + ([Path(record.root) / LOG_FILE] if record else []):
            with contextlib.suppress(OSError):
                said = tail_of_file(path, 5)
                if said:
                    text += f"\n[{path.name}] {said}"
        return text


@dataclass(kw_only=True)
class VmRecord:
    """Everything needed to find, reach and tear down one VM."""

    id: str
    vm_type: str
    vcpus: int
    mem_mib: int
    boot_mode: str
    created_at: float
    root: str  # the directory Firecracker runs in (work directory or chroot)
    jail_dir: str | None = None
    cgroup_dir: str | None = None
    metrics: bool = False
    pid: int | None = None
    network: dict[str, Any] | None = None  # a FirecrackerNetwork, with its pool slot and owner
    disk: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> VmSpec:
        """The VM's size and type (network mode is always netns)."""
        return VmSpec(
            vm_type=VmType(self.vm_type),
            vcpus=self.vcpus,
            mem_mib=self.mem_mib,
            network=NetworkMode.NETNS,
        )

    @property
    def mode(self) -> BootMode:
        """How the VM got to running."""
        return BootMode(self.boot_mode)

    @property
    def api_socket(self) -> Path:
        """The host path of the VM's API socket."""
        return Path(self.root) / API_SOCKET

    def to_vm(self, *, backend: str, workdir: Path, state: VmState) -> Vm:
        """The VM this record describes, as found again (with the token its work dir kept)."""
        network, disk = self.get_network(), self.get_disk()
        return Vm(
            id=self.id,
            spec=self.spec,
            backend=backend,
            state=state,
            agent_url=network.agent_url if network else None,
            token=read_legacy_token(workdir),
            pid=self.pid,
            workdir=workdir,
            boot_mode=self.mode,
            created_at=self.created_at,
            disk_bytes=bytes_on_disk(disk.cow_file) if disk else None,
        )

    def get_network(self) -> FirecrackerNetwork | None:
        """The VM's network, if one was acquired."""
        return FirecrackerNetwork.from_dict(self.network) if self.network else None

    def get_disk(self) -> CowDisk | None:
        """The VM's root disk, if one was created."""
        return CowDisk.from_dict(self.disk) if self.disk else None

    def write(self, files: VmFiles) -> None:
        """Replace the record on disk atomically."""
        tmp = files.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, sort_keys=True))
        os.replace(tmp, files.record)

    @classmethod
    def read(cls, files: VmFiles) -> VmRecord | None:
        """The record in ``files.workdir``, or None when absent or unreadable."""
        try:
            return cls(**json.loads(files.record.read_text()))
        except (OSError, ValueError, TypeError):
            return None
