"""Readiness: poll the agent's /health with backoff under a deadline, failing fast on VMM death.

A wait that gives up says which VM and what kind of failure its last probe met ("connection
refused", "timed out", an HTTP status): its message reaches API clients and the VM's row, and
the text of an httpx error may quote the agent's address inside the VM network, so that text
goes to the log (``vm_not_ready``) alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from hearth.errors import VmNotReady, VmProcessExited
from hearth.httpclient import async_client
from hearth.logging import get_logger

_log = get_logger("vm.readiness")
# What an OS error behind an httpx error means, in words that carry no address.
_OS_FAILURES: tuple[tuple[type[OSError], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
)
# What an httpx error means when no OS error above is behind it (the first that matches).
_HTTP_FAILURES: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.TimeoutException, "timed out"),
    (httpx.ConnectError, "could not connect"),
    (httpx.RemoteProtocolError, "no valid HTTP answer"),
    (httpx.NetworkError, "connection broke off"),
)


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

    Raises VmProcessExited as soon as ``exit_status()`` reports the VMM gone, and VmNotReady
    naming the VM and the kind of the last probe's failure when the deadline passes.
    """
    started = time.monotonic()
    last_error = last_detail = "no probe completed"
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
            probe_s = max(0.05, min(2.0, deadline.remaining()))
            try:
                # Only the status counts: the body is never read (a guest could send one
                # without end), and the whole probe, not each read, is bounded.
                async with (
                    asyncio.timeout(probe_s),
                    http.stream("GET", f"{url}/health", timeout=probe_s) as response,
                ):
                    status_code = response.status_code
                if status_code == 200:
                    return time.monotonic() - started
                last_error = last_detail = f"HTTP {status_code}"
            except TimeoutError:
                last_error = last_detail = "timed out"
            except httpx.HTTPError as exc:
                last_error, last_detail = _probe_failure(exc), f"{type(exc).__name__}: {exc}"
            if deadline.expired:
                break
            await asyncio.sleep(min(delay, deadline.remaining()))
        _log.warning("vm_not_ready", vm_id=vm_id, url=url, error=last_detail[:300])
        raise VmNotReady(
            f"VM {vm_id} not ready after {deadline.seconds * 1000:.0f} ms: {last_error}"
        )
    finally:
        if own_client:
            await http.aclose()


def _probe_failure(exc: httpx.HTTPError) -> str:
    """The kind of failure ``exc`` is ("connection refused", "timed out", ...), in words that
    carry no address (its own text may quote the URL or IP it failed on)."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for os_error, words in _OS_FAILURES:
            if isinstance(cause, os_error):
                return words
        cause = cause.__cause__ or cause.__context__
    for http_error, words in _HTTP_FAILURES:
        if isinstance(exc, http_error):
            return words
    return type(exc).__name__
