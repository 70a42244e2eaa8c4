"""A run's lifecycle: its statuses and the moves between them."""

from __future__ import annotations

from enum import StrEnum

from hearth.errors import Conflict


class RunStatus(StrEnum):
    """Where a run is."""

    STARTING = "starting"  # the row exists; the CLI is being started in the VM
    RUNNING = "running"  # the CLI runs under the VM's agent; its events are being read
    COMPLETED = "completed"  # the CLI answered and exited cleanly
    FAILED = "failed"  # it did not (the failure code says why, ``cancelled`` included)


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED})

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.STARTING: frozenset({RunStatus.RUNNING, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset({RunStatus.COMPLETED, RunStatus.FAILED}),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
}


def check_transition(run_id: str, old: RunStatus, new: RunStatus) -> None:
    """Raise Conflict unless the table allows ``old → new``."""
    if new not in TRANSITIONS[old]:
        raise Conflict(f"run {run_id} cannot go from {old.value} to {new.value}")
