"""The handover, a login's last stage: its captured document delivered into the user's CLI VM
and checked there, within the stage's deadline, and the session completed.

The CLI VM holds the login's document when, and only when, the session completes. A cancel does
not cut a delivery short (a write cut off between the agent and the vault left the document in
the VM of a session that read cancelled): the delivery finishes first, within its deadline,
then the document is taken out again. A delivery that misses its deadline, or fails, or whose
session another party ended meanwhile, is taken out too. Only a controller that stops leaves it
as it is: the next one delivers again (the sha256 check makes that idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

from hearth.agent_client import AgentClient
from hearth.auth.delivery import Delivery
from hearth.auth.stages import within


@dataclasses.dataclass(frozen=True, kw_only=True)
class Handover:
    """What one login hands over: ``provider``'s document of ``user_id`` into CLI VM ``vm_id``."""

    session_id: str
    user_id: str
    provider: str
    vm_id: str
    agent: AgentClient  # the CLI VM's agent


async def hand_over(
    delivery: Delivery,
    handover: Handover,
    *,
    deadline_s: float,
    complete: Callable[[], Awaitable[object]],
    stopping: Callable[[], bool],
) -> None:
    """Deliver and check the document within ``deadline_s`` (else StageTimeout), then
    ``complete`` the session; unless that completes it, take the document out of the CLI VM
    again (but not when ``stopping``: the controller leaves the session for the next one)."""
    until = asyncio.get_running_loop().time() + deadline_s
    work = asyncio.ensure_future(_deliver_and_check(delivery, handover))
    try:
        try:
            # Shielded: a cancel (or the deadline) reaches this wait, not the delivery.
            await within(asyncio.shield(work), deadline_s, "delivering the credentials")
        except asyncio.CancelledError:
            if not stopping():
                await _settle(work, until)  # a cancel waits for the delivery under way
            raise
        finally:
            work.cancel()  # the deadline passed, or the controller stops; else a no-op
            await asyncio.gather(work, return_exceptions=True)
        await complete()
    except BaseException:
        if not stopping():
            # Not cut short either: a cancel that lost to the delivery reaches the flow now.
            await _uncut(
                delivery.withdraw(
                    handover.agent, handover.user_id, handover.provider, handover.vm_id
                )
            )
        raise


async def _deliver_and_check(delivery: Delivery, handover: Handover) -> None:
    agent, provider, vm_id = handover.agent, handover.provider, handover.vm_id
    await delivery.deliver_with(agent, handover.user_id, provider, vm_id, fresh=True)
    await delivery.check_with_cli(agent, handover.session_id, provider, vm_id)


async def _uncut(work: Awaitable[None]) -> None:
    """``work`` run to its end, even when this wait is cancelled (the cancel goes on after)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
        raise


async def _settle(work: asyncio.Future[None], until: float) -> None:
    """Let ``work`` finish by loop time ``until``; it is cancelled after that, or as soon as
    this wait is itself cancelled (the controller stops while a cancel waits)."""
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                await asyncio.wait({work})
    finally:
        work.cancel()
