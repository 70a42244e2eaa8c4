"""``every``: the controller's background loops (monitor, heartbeats, expiry watch, pull-back)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hearth.errors import HearthError
from hearth.logging import get_logger

_log = get_logger("periodic")


async def every(interval_s: float, step: Callable[[], Awaitable[object]], *, what: str) -> None:
    """Run ``step`` now and then every ``interval_s`` forever (cancel to stop); a step that
    fails with a HearthError is logged as ``what`` and the next one runs."""
    while True:
        try:
            await step()
        except HearthError as exc:
            _log.warning("periodic_step_failed", what=what, error=exc.message[:300])
        await asyncio.sleep(interval_s)
