"""Host processes a benchmark cares about: the VMM's resident memory, and QEMU left behind."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from hearth.bench.errors import BenchError
from hearth.tools import tail


def vmm_rss_bytes(pid: int | None) -> int:
    """Resident memory of process ``pid`` (``VmRSS`` in /proc/PID/status), in bytes."""
    if not pid:
        raise BenchError("the VM has no process id")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError as exc:
        raise BenchError(f"cannot read the memory of process {pid}: {exc.strerror}") from exc
    raise BenchError(f"process {pid} reports no VmRSS")


def qemu_pids_under(directory: Path) -> list[int]:
    """Live (not zombie) QEMU processes whose command line names ``directory``."""
    needle = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in cmdline and needle in cmdline and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def kill_leftover_qemu(directory: Path) -> list[int]:
    """SIGKILL every QEMU still running from ``directory`` (ours by construction); their PIDs."""
    pids = qemu_pids_under(directory)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far, all its threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError as exc:
        raise BenchError(f"cannot read the CPU time of process {pid}: {exc.strerror}") from exc
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log file ("" if it cannot be read)."""
    try:
        return tail(log.read_text(errors="replace"), lines)
    except OSError:
        return ""
