"""What a QEMU backend's VMs hold on the host, read from the host itself: the VMs still running,
their consoles, and the processes, QMP sockets and network slots left behind (reported, or
removed when no kept VM holds them).

A guest writes its serial console into ``console.log`` on the host, as much as it likes; QEMU
appends to it, and each time the VM monitor asks whether the VM runs the log is kept under its
cap (``hearth.vm.console_log``); reads take only the file's end (``tail_of_file``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

from hearth.tools import tail_of_file
from hearth.vm.console_log import cut_console
from hearth.vm.qemu.command import VmPaths, console_chardev
from hearth.vm.qemu.network import QemuNetworks
from hearth.vm.qemu.process import is_our_process, qemu_args, qemu_pids_running_from
from hearth.vm.qemu.records import vm_from_record
from hearth.vm.qemu.templates import Template, build_vm_id
from hearth.vm.templates import SnapshotTemplateStore
from hearth.vm.types import Vm
from hearth_agent.processes import live_args


def running_vms(vms_dir: Path, *, backend: str) -> list[Vm]:
    """The VMs under ``vms_dir`` whose record reads and whose QEMU process is alive."""
    found: list[Vm] = []
    if not vms_dir.is_dir():
        return found
    for workdir in sorted(vms_dir.iterdir()):
        vm = vm_from_record(workdir, backend=backend)
        if vm is not None and vm.pid and is_our_process(vm.pid, workdir):
            found.append(vm)
    return found


async def reap_leftovers(
    templates: SnapshotTemplateStore[Template],
    run_dir: Path,
    networks: QemuNetworks,
    keep: set[str],
) -> list[str]:
    """Remove the template builds whose builder died (and their QEMU), and the QMP sockets and
    network slots of VMs not in ``keep`` (nor template builds running now, in this process or
    another: a ``hearth image build`` beside the controller); what was removed."""
    keep = keep | {build_vm_id(staging) for staging in templates.builds_in_progress()}
    reaped: list[str] = []
    for staging in templates.abandoned_builds():
        for pid in qemu_pids_running_from(staging):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(staging, ignore_errors=True)
        reaped.append(staging.name)
    if run_dir.is_dir():
        # QMP sockets, and the sockets hibernations stream a VM's state through.
        for sock in [*run_dir.glob("*.qmp"), *run_dir.glob("*.mig")]:
            if sock.stem not in keep:
                sock.unlink(missing_ok=True)
    return reaped + await networks.reap(keep)


def host_leftovers(dirs: Iterable[Path], run_dir: Path, networks: QemuNetworks) -> list[str]:
    """QEMU processes running from ``dirs``, QMP sockets in ``run_dir``, claimed network
    slots: each in a short sentence."""
    pids = {pid for d in dirs for pid in qemu_pids_running_from(d)}
    found = [f"QEMU process {pid} ({_qemu_name(pid)}) is still running" for pid in sorted(pids)]
    if run_dir.is_dir():
        found += [f"QMP socket {sock} is still there" for sock in sorted(run_dir.glob("*.qmp"))]
    found += [
        f"network slot {index} is still claimed by {owner}"
        for index, owner in sorted(networks.pool.claims().items())
    ]
    return found


def console_text(paths: VmPaths, lines: int) -> str:
    """The last ``lines`` of a VM's serial console, and QEMU's stderr when it said anything."""
    text = ""
    with contextlib.suppress(OSError):
        text = tail_of_file(paths.console, lines)
    with contextlib.suppress(OSError):
        stderr = tail_of_file(paths.stderr, 5)
        if stderr:
            text += f"\n[qemu stderr] {stderr}"
    return text


def qemu_runs(pid: int, paths: VmPaths) -> bool:
    """True while ``pid`` is the QEMU running from ``paths.workdir``; its console log is then
    kept under its cap (``cut_console``) if that QEMU appends to it (one started
    by an older Hearth, with ``-serial file:``, would write on at its old offset)."""
    args = qemu_args(pid, paths.workdir)
    if args is None:
        return False
    if console_chardev(paths.console) in args:
        cut_console(paths.console)
    return True


def _qemu_name(pid: int) -> str:
    """The ``-name`` QEMU process ``pid`` was started with ("hearth-<VM id>")."""
    args = live_args(pid) or []
    return args[args.index("-name") + 1] if "-name" in args[:-1] else "no -name"
