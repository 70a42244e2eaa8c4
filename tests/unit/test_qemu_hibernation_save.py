"""A hibernation's save that fails before QEMU sends a byte leaves nothing behind: no partial
state file, no handle open on one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from hearth.errors import SnapshotError
from hearth.vm.qemu.hibernation import save
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.saved_state import new_state_key
from hearth.vm.saved_files import state_path


def open_paths() -> set[str]:
    """What this process holds open."""
    fds = Path("/proc/self/fd")
    return {os.readlink(fds / fd) for fd in os.listdir(fds) if (fds / fd).exists()}


async def test_a_save_whose_socket_cannot_be_bound_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    target = state_path(tmp_path)
    socket = tmp_path / "gone" / "vm-1.mig"  # its directory is not there: the bind fails
    monitor = Monitor("vm-1", QMPClient("vm-1"))  # never reached

    with pytest.raises(SnapshotError, match="cannot listen on"):
        await save(monitor, socket=socket, target=target, key=new_state_key(), deadline_s=5)

    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not [path for path in open_paths() if path.startswith(str(tmp_path))]
