"""``every``: the controller's background loops (monitor, heartbeats, expiry watch, pull-back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from hearth.errors import HearthError
from hearth.logging import get_logger

_log = get_logger("periodic")
# How long a loop being stopped lets the step in progress finish before cancelling it too.
STEP_GRACE_S = 5.0


async def every(
    interval_s: float,
    step: Callable[[], Awaitable[object]],
    *,
    what: str,
    grace_s: float = STEP_GRACE_S,
) -> None:
    """Run ``step`` now and then every ``interval_s`` until cancelled; a step that fails is
    logged as ``what`` (an error that is not a HearthError with its traceback) and the next one
    runs.

    A cancel that arrives during a step lets that step finish (up to ``grace_s``, then it is
    cancelled too) before the loop ends: a step cut short mid-way could leave a write half-made
    or a database connection half-opened (the server then holds it until its own timeout).
    """
    while True:
        current = asyncio.ensure_future(step())
        try:
            await asyncio.shield(current)
        except HearthError as exc:
            _log.warning("periodic_step_failed", what=what, error=exc.message[:300])
        except Exception:  # a bug must not end the loop for good: logged, and the next step runs
            _log.exception("periodic_step_crashed", what=what)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(current, grace_s)
            raise
        await asyncio.sleep(interval_s)
