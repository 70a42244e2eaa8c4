"""A login's stages run against deadlines: the error a missed one raises, and the wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from hearth.errors import HearthError, VmError

T = TypeVar("T")


class StageTimeout(HearthError):
    """A stage of the flow did not finish before its deadline."""

    code = "auth_stage_timeout"
    http_status = 504


async def within(
    work: Awaitable[T],
    seconds: float,
    what: str,
    *,
    failed: str | None = None,
    limit_s: float | None = None,
) -> T:
    """``work`` within ``seconds`` (else StageTimeout naming ``what`` and ``limit_s``, the
    stage's whole limit when ``seconds`` is what is left of it); a VM error is prefixed with
    ``failed``, so the session's message says which stage failed."""
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        limit = seconds if limit_s is None else limit_s
        raise StageTimeout(f"timed out after {limit:.0f} s {what}") from None
    except VmError as exc:
        if failed is None:
            raise
        raise VmError(f"{failed}: {exc.message}") from exc
