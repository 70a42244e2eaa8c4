"""The state dir's lock (``hearth.state_dir_lock.StateDirLock``): one holder at a time, named to
whoever is refused; it goes with the process that held it, even one killed with SIGKILL, and is
never handed to the processes it started (the VMs a controller leaves running after it exits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.errors import Conflict
from hearth.state_dir_lock import CONTROLLER, StateDirLock

HOLD = (
    "import sys, time; from pathlib import Path; from hearth.state_dir_lock import StateDirLock; "
    "StateDirLock.take(Path(sys.argv[1]), holder='the controller'); print('held', flush=True); "
    "time.sleep(60)"
)


def test_a_second_holder_is_refused_naming_the_first_until_it_lets_go(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lock = StateDirLock.take(state, holder=CONTROLLER)
    with pytest.raises(Conflict) as refused:
        StateDirLock.take(state, holder="the master-key rotation")
    assert f"in use by the controller (pid {os.getpid()})" in refused.value.message
    assert "stop the controller first" in refused.value.message
    lock.close()
    lock.close()  # again: nothing
    StateDirLock.take(state, holder="the master-key rotation").close()
    assert (state / "controller.lock").stat().st_mode & 0o777 == 0o600


def test_the_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Conflict, match=rf"the controller \(pid {holder.pid}\)"):
            StateDirLock.take(tmp_path, holder=CONTROLLER)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    StateDirLock.take(tmp_path, holder=CONTROLLER).close()


def test_a_process_the_holder_started_does_not_keep_the_lock(tmp_path: Path) -> None:
    lock = StateDirLock.take(tmp_path, holder=CONTROLLER)
    # As a VM's QEMU outlives its controller; even told to keep every inheritable descriptor.
    child = subprocess.Popen(["sleep", "60"], close_fds=False)
    try:
        lock.close()
        StateDirLock.take(tmp_path, holder=CONTROLLER).close()
    finally:
        child.kill()
        child.wait(10)
