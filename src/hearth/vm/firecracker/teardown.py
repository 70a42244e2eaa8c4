"""Tearing one Firecracker VM down from its record: LIFO, idempotent, collecting errors.

Order (the reverse of creation): freeze and stop the process, remove the copy-on-write disk
(dm device, loop devices, COW file), the jail and its cgroup, the network, the work directory.
Each step runs whatever happened before it, and a step with nothing left to do does nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from hearth.errors import HearthError
from hearth.vm.firecracker import sequences
from hearth.vm.firecracker.client import FirecrackerClient
from hearth.vm.firecracker.disks import remove_cow_disk
from hearth.vm.firecracker.network import NetworkProvider
from hearth.vm.firecracker.process import FirecrackerProcess, is_our_process, stop_pid
from hearth.vm.firecracker.records import VmFiles, VmRecord


async def teardown_vm(
    vm_id: str,
    workdir: Path | None,
    *,
    proc: FirecrackerProcess | None,
    pid: int | None,
    networks: NetworkProvider,
) -> list[str]:
    """Remove everything VM ``vm_id`` holds; return what could not be removed."""
    errors: list[str] = []
    record = VmRecord.read(VmFiles(workdir=workdir)) if workdir else None
    pid = proc.pid if proc else (record.pid if record and record.pid else pid)
    if record is not None and pid and is_our_process(pid, vm_id) and record.api_socket.exists():
        async with FirecrackerClient(record.api_socket, timeout_s=1.0) as client:
            await sequences.halt(client, flush_metrics=record.metrics)
    try:
        if proc is not None:
            await proc.stop()
        elif pid:
            await stop_pid(pid, vm_id)
    except OSError as exc:
        errors.append(f"stop: {exc}")
    disk = record.get_disk() if record else None
    if disk is not None:
        errors += await asyncio.to_thread(remove_cow_disk, disk)
    if record is not None and record.jail_dir:
        errors += remove_jail(Path(record.jail_dir), record.cgroup_dir)
    network = record.get_network() if record else None
    if network is not None:
        try:
            await networks.release(network)
        except (HearthError, OSError) as exc:
            errors.append(f"network {network.netns}: {exc}")
    if workdir is not None:
        errors += _remove_tree(workdir)
    return errors


def remove_jail(jail_dir: Path, cgroup_dir: str | None) -> list[str]:
    """Remove a jailer's chroot tree and the (now empty) cgroup it created."""
    errors = _remove_tree(jail_dir)
    if cgroup_dir:
        try:
            os.rmdir(cgroup_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"remove cgroup {cgroup_dir}: {exc.strerror}")
    return errors


def _remove_tree(path: Path) -> list[str]:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return [f"remove {path}: {exc.strerror}"]
    return []
