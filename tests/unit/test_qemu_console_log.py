"""A VM's serial console log on the host: bounded however much its guest writes.

The guest's user is root in it and may write to ``/dev/ttyS0`` without end. Reading the console
(``GET /api/vms/{id}/console``, a failed VM's error, a readiness timeout) takes the file's last
64 KiB only, and QEMU appends to the file, so the VM monitor's second-by-second ``alive`` cuts a
log grown past its cap back to its tail while QEMU writes on at the new end. The stand-in QEMU
is Python under QEMU's name, holding the log open the way QEMU does with ``append=on``.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.backend import VmBackend
from hearth.vm.console_log import CONSOLE_CUT_MARK, CONSOLE_KEEP_BYTES
from hearth.vm.firecracker.records import VmFiles
from hearth.vm.qemu import host
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.command import VmPaths, qemu_argv
from hearth.vm.types import Vm, VmSpec
from tests.unit.test_qemu_option_paths import after, qemu_options
from tests.unit.test_qemu_process import wait_for_args

LINE = b"guest root wrote this to /dev/ttyS0 again and again and again\n"
FLOOD_BYTES = 10 << 20  # past the cap


def write_log(path: Path, size: int, last: bytes) -> None:
    with path.open("wb") as log:
        for _ in range(size // len(LINE)):
            log.write(LINE)
        log.write(last)


def argv_of(paths: VmPaths, tmp_path: Path) -> list[str]:
    return qemu_argv(
        binary="qemu-system-x86_64",
        vm_id=paths.vm_id,
        image=ImageDir(tmp_path / "image"),
        spec=VmSpec(),
        accel=Accel("tcg", "test"),
        paths=paths,
        host_port=4100,
    )


def test_reading_a_huge_console_loads_only_its_tail(tmp_path: Path) -> None:
    paths = VmPaths(workdir=tmp_path, run_dir=tmp_path, vm_id="vm-1")
    write_log(paths.console, 32 << 20, b"the last line\n")
    paths.stderr.write_bytes(b"qemu: warning\n" * 100_000 + b"qemu: the end\n")
    fc = VmFiles(workdir=tmp_path / "fc")
    fc.workdir.mkdir()
    fc.console.symlink_to(paths.console)

    tracemalloc.start()
    try:
        text = host.console_text(paths, 3)
        fc_text = fc.console_tail(3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 1 << 20, f"reading two consoles took {peak >> 20} MiB"
    assert text.splitlines() == [
        LINE.decode().strip(),
        LINE.decode().strip(),
        "the last line",
        "[qemu stderr] qemu: warning",
        *["qemu: warning"] * 3,
        "qemu: the end",
    ]
    assert fc_text.splitlines() == text.splitlines()[:3]


def test_the_console_is_a_file_qemu_appends_to(tmp_path: Path) -> None:
    paths = VmPaths(workdir=tmp_path / "a,b", run_dir=tmp_path, vm_id="vm-1")
    argv = argv_of(paths, tmp_path)

    [chardev] = after(argv, "-chardev")
    assert qemu_options(chardev, implied="backend") == {
        "backend": "file",
        "id": "console",
        "path": str(paths.console),
        "append": "on",
    }
    assert after(argv, "-serial") == ["chardev:console"]


# The stand-in: opens the log as QEMU does with append=on, floods it, then writes one line for
# each line it reads on stdin.
_QEMU = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
line = b"flood " * 10 + b"\\n"
for _ in range(int(sys.argv[2]) // len(line)):
    os.write(fd, line)
os.write(fd, b"before the cut\\n")
print("flooded", flush=True)
for said in sys.stdin:
    os.write(fd, said.encode())
    print("wrote", flush=True)
"""


class StandIn:
    """A stand-in QEMU running from a VM's work dir, appending to its console."""

    def __init__(self, tmp_path: Path, paths: VmPaths, args: list[str]) -> None:
        qemu = tmp_path / "bin" / "qemu-system-x86_64"
        if not qemu.exists():
            qemu.parent.mkdir(exist_ok=True)
            qemu.symlink_to(sys.executable)
        self.proc = subprocess.Popen(
            [str(qemu), "-c", _QEMU, str(paths.console), str(FLOOD_BYTES), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        wait_for_args(self.proc.pid, "qemu-system")
        assert self._answer() == "flooded"

    def say(self, line: str) -> None:
        """Have it write ``line`` to the console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self._answer() == "wrote"

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()


@dataclass
class Flooded:
    """A VM whose stand-in QEMU has flooded its console."""

    vm: Vm
    paths: VmPaths
    qemu: StandIn


@pytest.fixture
def backend(tmp_path: Path) -> QemuBackend:
    return QemuBackend(state_dir=tmp_path / "state", run_dir=tmp_path / "run")


@pytest.fixture
def flooded(tmp_path: Path, backend: QemuBackend) -> Iterator[Callable[..., Flooded]]:
    """Starts a flooding stand-in for a VM of ``backend``: with QEMU's own command line, or
    (``appends=False``) an older Hearth's (``-serial file:``); each killed (by PID) after."""
    started: list[StandIn] = []

    def start(vm_id: str, *, appends: bool = True) -> Flooded:
        workdir = backend.vms_dir / vm_id
        workdir.mkdir(parents=True)
        paths = VmPaths(workdir=workdir, run_dir=backend.run_dir, vm_id=vm_id)
        args = argv_of(paths, tmp_path)[1:] if appends else ["-serial", f"file:{paths.console}"]
        started.append(qemu := StandIn(tmp_path, paths, args))
        vm = Vm(id=vm_id, spec=VmSpec(), backend="qemu", workdir=workdir, pid=qemu.proc.pid)
        return Flooded(vm, paths, qemu)

    try:
        yield start
    finally:
        for stand_in in started:
            stand_in.proc.kill()
            stand_in.proc.wait()


def test_a_flooded_console_is_cut_to_its_tail_and_qemu_writes_on_after_it(
    backend: QemuBackend, flooded: Callable[..., Flooded]
) -> None:
    started = flooded("vm-1")
    cut_then_written_on(
        backend, started.vm, started.paths.console, lambda: started.qemu.say("after the cut")
    )


def cut_then_written_on(
    backend: VmBackend, vm: Vm, console: Path, say_after_the_cut: Callable[[], None]
) -> None:
    """The flooded ``console`` of running ``vm`` cut to its tail by ``backend.alive`` (as the
    VM monitor asks every second), then written on at its new end by the VMM, once
    ``say_after_the_cut`` has it write "after the cut"; a log under the cap left as it is."""
    assert console.stat().st_size > FLOOD_BYTES // 2

    assert backend.alive(vm)

    kept = console.stat().st_size
    assert kept <= CONSOLE_KEEP_BYTES + len(CONSOLE_CUT_MARK) < FLOOD_BYTES // 8
    say_after_the_cut()
    log = console.read_bytes()
    assert log.startswith(CONSOLE_CUT_MARK + b"flood ")
    assert log.endswith(b"before the cut\nafter the cut\n")
    assert len(log) == kept + len(b"after the cut\n")  # at the new end: no hole, no overwrite
    assert backend.console_tail(vm, 2).splitlines() == ["before the cut", "after the cut"]
    assert backend.alive(vm)
    assert console.read_bytes() == log  # under the cap: left as it is


def test_a_console_qemu_does_not_append_to_is_left_whole(
    backend: QemuBackend, flooded: Callable[..., Flooded]
) -> None:
    # A VM an older Hearth started, QEMU without O_APPEND: it would write on at its old offset
    # into a cut file, so that log is not cut.
    started = flooded("vm-old", appends=False)
    size = started.paths.console.stat().st_size

    assert backend.alive(started.vm)

    assert started.paths.console.stat().st_size == size
