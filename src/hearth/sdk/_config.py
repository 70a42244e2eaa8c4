"""How a client behaves, as data: where the API is, its key, timeouts, resumes and polling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from hearth.sdk._errors import HearthConfigError, WaitTimeout

DEFAULT_URL = "http://127.0.0.1:4000"
DEFAULT_TIMEOUT_S = 60.0
# An event stream that brings nothing, not even the API's keepalive (every 15 s), this long is
# taken for a dead connection and picked up again (a quiet command is not: keepalives come).
STREAM_READ_TIMEOUT_S = 60.0
# Creating a VM with wait=True answers once its agent is healthy: a cold boot on a slow host.
DEFAULT_BOOT_TIMEOUT_S = 600.0


@dataclass(frozen=True, kw_only=True)
class ResumePolicy:
    """How often, and after how long, a broken event stream is picked up again.

    ``max_resumes`` counts breaks in a row: an event received in between starts the count anew,
    so a long command on a flaky link goes on while a stream that never gets anywhere gives up.
    The default tries for about 26 s (0.1 s doubling to 5 s, ten times): long enough for a
    controller to restart (a stopping controller ends its streams at once), short enough to
    tell a dead one soon.
    """

    max_resumes: int = 10
    first_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        """The pause before resume number ``attempt`` (1-based), doubling up to the cap."""
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s))


DEFAULT_RESUME = ResumePolicy()


def api_key(raw: str, *, source: str = "the API key") -> str:
    """``raw`` (from ``source``) as a key to send: the whitespace around it (a key file's
    newline) dropped. HearthConfigError for a character no HTTP header can carry (a control
    character, one beyond ASCII); its message never quotes the key."""
    key = raw.strip()
    if any(not " " <= char <= "~" for char in key):
        raise HearthConfigError(
            f"{source} holds a control character or one beyond ASCII, which no HTTP header "
            "can carry (the key itself is not shown)"
        )
    return key


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """The API's base URL and key, and the client's timeouts. The key is kept without the
    whitespace around it, and refused (HearthConfigError) when no header can carry it."""

    url: str
    key: str = field(repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    boot_timeout_s: float = DEFAULT_BOOT_TIMEOUT_S
    resume: ResumePolicy = DEFAULT_RESUME

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", api_key(self.key))

    @classmethod
    def resolve(
        cls,
        url: str | None,
        key: str | None,
        *,
        timeout_s: float,
        resume: ResumePolicy,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientConfig:
        """The arguments, else ``HEARTH_URL`` / ``HEARTH_API_KEY`` from ``environ`` (the key
        without the whitespace around it: a file's newline)."""
        source = "key=..." if key else "HEARTH_API_KEY"
        key = api_key(key or environ.get("HEARTH_API_KEY") or "", source=source)
        if not key:
            raise HearthConfigError("no API key: pass key=... or set HEARTH_API_KEY")
        url = url or environ.get("HEARTH_URL") or DEFAULT_URL
        return cls(url=url.rstrip("/"), key=key, timeout_s=timeout_s, resume=resume)

    def headers(self) -> dict[str, str]:
        """What every request carries."""
        return {"Authorization": f"Bearer {self.key}"}

    def client_args(self) -> dict[str, Any]:
        """What ``httpx.Client`` / ``httpx.AsyncClient`` are built with, but the transport."""
        return {"base_url": self.url, "headers": self.headers(), "timeout": self.timeout_s}

    def stream_timeout(self) -> httpx.Timeout:
        """An event stream's timeout: a stream quiet for ``STREAM_READ_TIMEOUT_S`` (not even a
        keepalive) is a dead connection (a laptop that slept, a forgotten NAT entry)."""
        return httpx.Timeout(self.timeout_s, read=STREAM_READ_TIMEOUT_S)


class Deadline:
    """A wait that polls every ``interval_s`` until ``timeout_s`` has passed."""

    def __init__(
        self,
        what: str,
        *,
        timeout_s: float,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._clock = clock
        self._ends = clock() + timeout_s

    def next_pause_s(self) -> float:
        """How long to sleep before polling again; WaitTimeout once the deadline has passed."""
        left = self._ends - self._clock()
        if left <= 0:
            raise WaitTimeout(f"{self.what}: still not done after {self.timeout_s:g} s")
        return min(self.interval_s, left)
