"""A Firecracker VM's serial console log on the host: bounded however much its guest writes.

Firecracker writes the guest's serial output to its stdout, a file ``FirecrackerProcess.start``
opens for appending; the VM monitor's second-by-second ``alive`` cuts a log grown past its cap
back to its tail (as for QEMU: ``hearth.vm.console_log``) while Firecracker writes on at the
new end. The stand-in Firecracker is Python under Firecracker's name, started by that code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.vm.accel import Accel
from hearth.vm.firecracker.backend import FirecrackerBackend
from hearth.vm.firecracker.process import FirecrackerProcess, VmRoot
from hearth.vm.firecracker.records import VmFiles
from hearth.vm.types import Vm, VmSpec
from tests.processes import until_args_show
from tests.unit.test_qemu_console_log import FLOOD_BYTES, cut_then_written_on

VM_ID = "vm-c0501e"

# Floods its stdout (the console), then writes one line once the test says so (a file appears).
_FIRECRACKER = """
import os, sys, time
line = b"flood " * 10 + b"\\n"
for _ in range(int(sys.argv[1]) // len(line)):
    os.write(1, line)
os.write(1, b"before the cut\\n")
open("flooded", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
os.write(1, b"after the cut\\n")
open("wrote", "w").close()
time.sleep(60)
"""


def until_exists(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@dataclass
class Flooded:
    """A VM whose stand-in Firecracker has flooded its console."""

    backend: FirecrackerBackend
    vm: Vm
    files: VmFiles
    root: Path

    def say_after_the_cut(self) -> None:
        (self.root / "go").touch()
        until_exists(self.root / "wrote")


@pytest.fixture
async def flooded(tmp_path: Path) -> AsyncIterator[Flooded]:
    link = tmp_path / "bin" / "firecracker"
    link.parent.mkdir()
    link.symlink_to(sys.executable)
    backend = FirecrackerBackend(
        state_dir=tmp_path / "state", firecracker=str(link), accel=Accel("kvm", "test")
    )
    files = VmFiles(workdir=backend.vms_dir / VM_ID)
    root = files.workdir / "root"
    root.mkdir(parents=True)
    argv = [str(link), "-c", _FIRECRACKER, str(FLOOD_BYTES), "--id", VM_ID]
    proc = await FirecrackerProcess.start(
        argv, vm_id=VM_ID, root=VmRoot(root), console=files.console, stderr=files.stderr
    )
    try:
        until_args_show(proc.pid, VM_ID)
        until_exists(root / "flooded")
        vm = Vm(id=VM_ID, spec=VmSpec(), backend="firecracker", workdir=files.workdir, pid=proc.pid)
        yield Flooded(backend, vm, files, root)
    finally:
        await proc.stop(grace_s=0.0)


async def test_a_flooded_console_is_cut_to_its_tail_and_firecracker_writes_on_after_it(
    flooded: Flooded,
) -> None:
    cut_then_written_on(
        flooded.backend, flooded.vm, flooded.files.console, flooded.say_after_the_cut
    )


async def test_the_console_of_a_vm_that_is_not_running_is_left_as_it_is(
    flooded: Flooded,
) -> None:
    # Not its Firecracker (another PID): nothing is cut, the log kept for a post-mortem.
    size = flooded.files.console.stat().st_size
    other = Vm(
        id="vm-other",
        spec=VmSpec(),
        backend="firecracker",
        workdir=flooded.files.workdir,
        pid=flooded.vm.pid,
    )

    assert not flooded.backend.alive(other)

    assert flooded.files.console.stat().st_size == size
