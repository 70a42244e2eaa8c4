"""Where a VM's saved state lives in its work dir while it is hibernated, for every backend
that hibernates: ``state.enc``, sealed, written first as ``state.enc.partial`` until whole.

A save that a controller's end cut short (kill -9) leaves the partial file; nothing else would
remove it, and it holds a share of the guest's memory (encrypted) and of its user's disk quota
for the VM's whole life: ``drop_stale_partial`` removes it where no save can be under way.
"""

from __future__ import annotations

from pathlib import Path

from hearth.logging import get_logger

_log = get_logger("vm.saved_files")
STATE_FILE = "state.enc"
PARTIAL_SUFFIX = ".partial"


def state_path(workdir: Path) -> Path:
    """Where the VM in ``workdir`` keeps its saved state while hibernated."""
    return workdir / STATE_FILE


def drop_stale_partial(state: Path, *, during: str) -> bool:
    """Remove the part of saved state ``state`` that a save cut short left beside it (the
    controller killed mid-save: its ``StateWriter`` never aborted). Nothing else would: it
    holds a share of the guest's memory, encrypted, on disk and in its user's disk quota for
    the VM's whole life. Logged (``stale_saved_state_removed``, with ``during``); whether there
    was one. Call only where no save of this VM can be under way in this process (its writer:
    QEMU writes into a socket): at a controller's start, in a wake (the VM is hibernated and
    its turn held), or as its next save begins (its turn held, one save at a time)."""
    held = drop_partial(state)
    if held is not None:
        _log.warning(
            "stale_saved_state_removed", workdir=str(state.parent), bytes=held, during=during
        )
    return held is not None


def partial_path(path: Path) -> Path:
    """Where ``StateWriter`` writes the state sealed into ``path`` until it is whole."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def drop_partial(path: Path) -> int | None:
    """Remove the partial file of ``path`` that a save cut short left (its writer's process
    killed: ``abort`` never ran); the bytes it held, None when there was none. Its writer is
    always the controller's own process (QEMU writes into a socket, never into the file), so
    call this only where no save of this state can be under way in it."""
    partial = partial_path(path)
    try:
        held = partial.stat().st_size
        partial.unlink()
    except FileNotFoundError:
        return None
    return held
