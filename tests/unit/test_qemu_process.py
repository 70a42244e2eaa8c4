"""Which host processes are a QEMU VM's: a QEMU naming the VM's directory, nothing else.

A controller restarted later finds its VMs by the PIDs they recorded; a PID reused by another
program that happens to name the directory (a ``tail -f`` of the console) is not the VM, and
is never signalled as one. One whose PID was never recorded is found by its directory. The
stand-in QEMUs are Python under QEMU's name.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.vm.qemu.process import is_our_process, qemu_pids_running_from, stop_adopted


@dataclass
class StandIns:
    """A VM's work dir, a stand-in QEMU running from it, one running from elsewhere, and a
    ``tail -f`` of the VM's console."""

    workdir: Path
    ours: subprocess.Popen[bytes]
    elsewhere: subprocess.Popen[bytes]
    tail: subprocess.Popen[bytes]


def wait_for_args(pid: int, name: str) -> None:
    # The kernel shows the new program's command line a moment after the spawn returns.
    cmdline = Path(f"/proc/{pid}/cmdline")
    for _ in range(500):
        if name.encode() in cmdline.read_bytes():
            return
        subprocess.run(["sleep", "0.01"], check=True)
    raise AssertionError(f"process {pid} never showed {name}")


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[StandIns]:
    """The processes, started; each killed (by PID) after the test."""
    workdir = tmp_path / "vms" / "vm-1"
    workdir.mkdir(parents=True)
    qemu = tmp_path / "bin" / "qemu-system-x86_64"
    qemu.parent.mkdir()
    qemu.symlink_to(sys.executable)
    idle = "import time; time.sleep(300)"
    console = workdir / "console.log"
    console.touch()
    found = StandIns(
        workdir=workdir,
        ours=subprocess.Popen([str(qemu), "-c", idle, f"file={workdir}/disk.qcow2"]),
        elsewhere=subprocess.Popen([str(qemu), "-c", idle, f"file={tmp_path}/other/d.qcow2"]),
        tail=subprocess.Popen(["tail", "-f", str(console)]),
    )
    processes = (found.ours, found.elsewhere, found.tail)
    try:
        for process, shown in zip(
            processes, ("qemu-system", "qemu-system", "console"), strict=True
        ):
            wait_for_args(process.pid, shown)
        yield found
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_only_a_qemu_naming_the_directory_is_the_vms(stand_ins: StandIns) -> None:
    workdir = stand_ins.workdir
    assert is_our_process(stand_ins.ours.pid, workdir)
    assert not is_our_process(stand_ins.elsewhere.pid, workdir)
    assert not is_our_process(stand_ins.tail.pid, workdir)
    assert qemu_pids_running_from(workdir) == [stand_ins.ours.pid]


async def test_a_qemu_whose_pid_was_never_recorded_is_found_by_its_directory_and_stopped(
    stand_ins: StandIns,
) -> None:
    # Its controller died between spawning it and writing its record: the reap has no PID.
    await stop_adopted(None, stand_ins.workdir)

    assert stand_ins.ours.wait(timeout=10) is not None
    assert stand_ins.elsewhere.poll() is None
    assert stand_ins.tail.poll() is None
