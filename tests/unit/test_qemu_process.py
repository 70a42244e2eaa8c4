"""Which host processes are a QEMU VM's: a QEMU naming the VM's directory, nothing else.

A controller restarted later finds its VMs by the PIDs they recorded; a PID reused by another
program that happens to name the directory (a ``tail -f`` of the console) is not the VM, and
is never signalled as one. The stand-in QEMUs are Python under QEMU's name.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.vm.qemu.process import is_our_process, qemu_pids_running_from


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed (by PID) after it."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def run(started: list[subprocess.Popen[bytes]], *argv: str) -> int:
    process = subprocess.Popen(argv)
    started.append(process)
    return process.pid


def wait_for_args(pid: int, name: str) -> None:
    # The kernel shows the new program's command line a moment after the spawn returns.
    cmdline = Path(f"/proc/{pid}/cmdline")
    for _ in range(500):
        if name.encode() in cmdline.read_bytes():
            return
        subprocess.run(["sleep", "0.01"], check=True)
    raise AssertionError(f"process {pid} never showed {name}")


def test_only_a_qemu_naming_the_directory_is_the_vms(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    workdir = tmp_path / "vms" / "vm-1"
    workdir.mkdir(parents=True)
    qemu = tmp_path / "bin" / "qemu-system-x86_64"  # Python under QEMU's name
    qemu.parent.mkdir()
    qemu.symlink_to(sys.executable)
    idle = "import time; time.sleep(300)"
    ours = run(started, str(qemu), "-c", idle, f"file={workdir}/disk.qcow2")
    elsewhere = run(started, str(qemu), "-c", idle, f"file={tmp_path}/other/disk.qcow2")
    console = workdir / "console.log"
    console.touch()
    tail = run(started, "tail", "-f", str(console))
    for pid, shown in ((ours, "qemu-system"), (elsewhere, "qemu-system"), (tail, "console")):
        wait_for_args(pid, shown)

    assert is_our_process(ours, workdir)
    assert not is_our_process(elsewhere, workdir)
    assert not is_our_process(tail, workdir)
    assert qemu_pids_running_from(workdir) == [ours]
