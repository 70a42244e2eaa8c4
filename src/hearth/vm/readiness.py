"""Readiness: poll the agent's /health with backoff under a deadline, failing fast on VMM death."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from hearth.errors import VmNotReady, VmProcessExited
from hearth.httpclient import async_client


@dataclass(frozen=True)
class Deadline:
    """A point in monotonic time by which something must have happened."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(at=time.monotonic() + seconds, seconds=seconds)

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return time.monotonic() >= self.at


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential delays from ``initial_s`` growing by ``factor`` up to ``cap_s``."""

    initial_s: float = 0.02
    factor: float = 2.0
    cap_s: float = 0.5

    def delays(self) -> Iterator[float]:
        """An endless sequence of delays."""
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.cap_s, delay * self.factor)


# Cold boots under TCG in CI take ≈ 11 s on an idle machine; leave room for a loaded one.
COLD_BOOT_DEADLINE_S = 120.0
RESTORE_DEADLINE_S = 30.0


async def wait_until_healthy(
    url: str,
    *,
    vm_id: str,
    deadline: Deadline,
    exit_status: Callable[[], int | None],
    console_tail: Callable[[], str],
    backoff: Backoff | None = None,
    client: httpx.AsyncClient | None = None,
) -> float:
    """Poll ``url`` + ``/health`` until it answers 200; return the seconds it took.

    Raises VmProcessExited as soon as ``exit_status()`` reports the VMM gone, and VmNotReady with
    the last probe error when the deadline passes.
    """
    started = time.monotonic()
    last_error = "no probe completed"
    own_client = client is None
    http = client or async_client()
    try:
        for delay in (backoff or Backoff()).delays():
            status = exit_status()
            if status is not None:
                raise VmProcessExited(
                    f"VM {vm_id} exited with status {status} before its agent was healthy; "
                    f"console:\n{console_tail()}"
                )
            try:
                response = await http.get(
                    f"{url}/health", timeout=max(0.05, min(2.0, deadline.remaining()))
                )
                if response.status_code == 200:
                    return time.monotonic() - started
                last_error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if deadline.expired:
                break
            await asyncio.sleep(min(delay, deadline.remaining()))
        raise VmNotReady(
            f"VM {vm_id} not ready after {deadline.seconds * 1000:.0f} ms: {last_error}"
        )
    finally:
        if own_client:
            await http.aclose()
