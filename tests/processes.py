"""Waiting for a process just spawned to show in /proc as code that scans /proc would see it."""

from __future__ import annotations

import time

from hearth_agent.processes import live_args

SHOW_DEADLINE_S = 5.0


def until_args_show(pid: int, needle: str, *, timeout_s: float = SHOW_DEADLINE_S) -> None:
    """Wait until process ``pid``'s command line holds ``needle``. Right after a spawn returns,
    the kernel can show the new command line empty for a moment (seen in 78 of 100 reads under
    load); a test that stops or finds the process by its command line waits for it first."""
    deadline = time.monotonic() + timeout_s
    while needle not in (live_args(pid) or []):
        assert time.monotonic() < deadline, f"the command line of {pid} never showed {needle!r}"
        time.sleep(0.01)
