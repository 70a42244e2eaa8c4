"""The part of a saved state that a controller killed mid-save leaves (``state.enc.partial``,
its ``StateWriter`` never aborted) is removed, and logged, by the VM's next wake or hibernation,
never the whole saved state beside it: the QEMU backend's own save and wake steps, on real files
written by a real writer in a process killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient
from structlog.testing import capture_logs

from hearth.errors import SavedStateCorrupt, SnapshotError
from hearth.vm.qemu.hibernation import check_saved, save
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.saved_state import CHUNK_BYTES, StateWriter, new_state_key, read_state
from hearth.vm.saved_files import partial_path, state_path

# A writer sealing 3 MiB of "guest memory" into the state file, then killed as ``kill -9``
# kills a controller mid-save: no abort, no finish.
_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from hearth.vm.qemu.saved_state import StateWriter, new_state_key
writer = StateWriter(Path(sys.argv[1]), new_state_key())
writer.write(b"m" * (3 << 20))
os.kill(os.getpid(), signal.SIGKILL)
"""


def cut_short_save(state: Path) -> int:
    """Leave what a save into ``state`` killed midway leaves; the partial file's size."""
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(state)], timeout=30)
    assert done.returncode == -signal.SIGKILL
    partial = partial_path(state)
    assert partial.is_file()
    return partial.stat().st_size


def stale_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``stale_saved_state_removed`` warnings in ``logs``."""
    return [entry for entry in logs if entry["event"] == "stale_saved_state_removed"]


def test_a_wake_removes_the_partial_state_and_reads_the_whole_one(tmp_path: Path) -> None:
    # Hibernated whole once; a later save of it was cut short (as a restart leaves it).
    state, key = state_path(tmp_path), new_state_key()
    writer = StateWriter(state, key)
    writer.write(b"g" * (CHUNK_BYTES + 5))
    writer.finish()
    held = cut_short_save(state)
    assert held > 3 << 20

    with capture_logs() as logs:
        assert check_saved(tmp_path) == state

    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.enc"]
    assert b"".join(read_state(state, key)) == b"g" * (CHUNK_BYTES + 5)
    (entry,) = stale_logs(logs)
    assert (entry["log_level"], entry["during"], entry["bytes"]) == ("warning", "wake", held)
    assert entry["workdir"] == str(tmp_path)


def test_a_wake_without_a_saved_state_keeps_the_partial_one_for_inspection(
    tmp_path: Path,
) -> None:
    cut_short_save(state_path(tmp_path))
    with pytest.raises(SavedStateCorrupt, match="is missing"):
        check_saved(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.enc.partial"]


async def test_the_next_hibernation_removes_the_partial_state_first(tmp_path: Path) -> None:
    held = cut_short_save(state_path(tmp_path))
    socket = tmp_path / "gone" / "vm-1.mig"  # the save itself then fails: its bind
    monitor = Monitor("vm-1", QMPClient("vm-1"))  # never reached

    with capture_logs() as logs, pytest.raises(SnapshotError, match="cannot listen on"):
        await save(
            monitor, socket=socket, target=state_path(tmp_path), key=new_state_key(), deadline_s=5
        )

    assert list(tmp_path.iterdir()) == []
    (entry,) = stale_logs(logs)
    assert (entry["during"], entry["bytes"]) == ("hibernate", held)
