"""What runs against a VM's agent before the VM goes away (destroyed or hibernated).

The credential pull-back reads back documents the CLI may have rotated; the workspace's hook
syncs and unmounts the user's files. Both need the VM's agent to answer, so a paused VM runs
again for them. A hook that fails is logged and the others still run: the VM goes either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from hearth.errors import HearthError
from hearth.logging import get_logger
from hearth.node.interface import Node
from hearth.store import VmRecord
from hearth.vm.types import Vm, VmState

_log = get_logger("control.agent_hooks")
# A hook run before a VM goes away: its record and its agent token (if held).
BeforeDestroy = Callable[[VmRecord, str | None], Awaitable[None]]


async def run_agent_hooks(
    node: Node,
    vm: Vm | None,
    record: VmRecord,
    token: str | None,
    hooks: Sequence[BeforeDestroy],
    *,
    before: str,
    pause_after: bool = False,
) -> None:
    """Run ``hooks`` against ``vm``'s agent, each failure logged as ``before_<before>_failed``.
    A paused VM (as the node left it: a row is written after the node acted) runs again for
    them and, with ``pause_after``, is paused again after them; one that cannot run again gets
    no hooks."""
    failed = f"before_{before}_failed"
    paused = vm if vm is not None and vm.state is VmState.PAUSED else None
    if paused is not None:
        try:
            await node.resume(paused)
        except HearthError as exc:
            _log.warning(failed, vm_id=record.id, error=exc.message[:300])
            return
    for hook in hooks:
        try:
            await hook(record, token)
        except HearthError as exc:
            _log.warning(failed, vm_id=record.id, error=exc.message[:300])
        except Exception:  # a bug in one hook must not keep the VM from going
            _log.exception(failed, vm_id=record.id)
    if paused is not None and pause_after:
        await node.pause(paused)
