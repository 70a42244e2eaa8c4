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
from hearth.vm.console_log import CONSOLE_CUT_MARK, CONSOLE_KEEP_BYTES
from hearth.vm.firecracker.backend import FirecrackerBackend
from hearth.vm.firecracker.process import FirecrackerProcess, VmRoot
from hearth.vm.firecracker.records import VmFiles
from hearth.vm.types import Vm, VmSpec
from tests.processes import until_args_show

VM_ID = "vm-c0501e"
FLOOD_BYTES = 10 << 20  # past the cap

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
    backend, vm, console = flooded.backend, flooded.vm, flooded.files.console
    assert console.stat().st_size > FLOOD_BYTES // 2

    assert backend.alive(vm)  # the VM monitor asks this every second

    kept = console.stat().st_size
    assert kept <= CONSOLE_KEEP_BYTES + len(CONSOLE_CUT_MARK) < FLOOD_BYTES // 8
    flooded.say_after_the_cut()
    log = console.read_bytes()
    assert log.startswith(CONSOLE_CUT_MARK + b"flood ")
    assert log.endswith(b"before the cut\nafter the cut\n")
    assert len(log) == kept + len(b"after the cut\n")  # at the new end: no hole, no overwrite
    assert backend.console_tail(vm, 2).splitlines() == ["before the cut", "after the cut"]
    assert backend.alive(vm)
    assert console.read_bytes() == log  # under the cap: left as it is


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
