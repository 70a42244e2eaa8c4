"""VmChores: background tasks by VM and kind, one of each at a time.

The lifetimes loop starts a VM's look at its commands and its action here rather than awaiting
them: what one VM's agent or VMM takes then holds up no other VM's lifetime. A chore still under
way is not started again; one that fails is logged (a bug with its traceback), and the next
round may start it again. A kind may be given a most at once (``at_once``): a chore of it
started past that waits for a place, counted as under way meanwhile. ``stop`` lets those under
way end for a grace, then cancels them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from hearth.errors import HearthError
from hearth.logging import get_logger

_log = get_logger("control.vm_chores")


class VmChores:
    """The chores under way, by (VM id, kind)."""

    def __init__(self, *, at_once: Mapping[str, int] | None = None) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Task[object]] = {}
        self._places = {kind: asyncio.Semaphore(most) for kind, most in (at_once or {}).items()}

    def start(
        self, vm_id: str, kind: str, chore: Callable[[], Coroutine[Any, Any, object]]
    ) -> bool:
        """Start ``chore()`` as VM ``vm_id``'s ``kind`` unless one runs; whether it started."""
        key = (vm_id, kind)
        if key in self._tasks:
            return False
        task = asyncio.create_task(self._in_place(kind, chore), name=f"{kind}-{vm_id}")
        self._tasks[key] = task
        task.add_done_callback(lambda ended: self._ended(key, ended))
        return True

    async def _in_place(
        self, kind: str, chore: Callable[[], Coroutine[Any, Any, object]]
    ) -> object:
        places = self._places.get(kind)
        if places is None:
            return await chore()
        async with places:
            return await chore()

    def _ended(self, key: tuple[str, str], task: asyncio.Task[object]) -> None:
        self._tasks.pop(key, None)
        error = None if task.cancelled() else task.exception()
        vm_id, kind = key
        if isinstance(error, HearthError):
            _log.warning("vm_chore_failed", vm_id=vm_id, chore=kind, error=error.message[:300])
        elif error is not None:  # a bug: logged with its traceback; the next round tries again
            _log.error("vm_chore_crashed", vm_id=vm_id, chore=kind, exc_info=error)

    async def stop(self, grace_s: float) -> None:
        """Let the chores under way end (for at most ``grace_s``), then cancel the rest."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
