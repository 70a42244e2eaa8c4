"""``ChildServer``: a server a benchmark starts as its own child process, output in a log file.

What the bench's controller (``hearth serve``) and its OAuth server (``node server.mjs``) share:
spawned in a session of their own with stdin closed and both streams in one log, an error that
names the exit status and the log's tail when one dies while the bench waits for it, a start
that stops the child again when it does not become ready, and a stop (SIGTERM, then SIGKILL)
that waits for the exit and is idempotent.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from hearth.bench.errors import BenchError
from hearth.bench.processes import log_tail
from hearth.vm.host import stop_child


@dataclass(eq=False, kw_only=True)
class ChildServer(ABC):
    """One child server process and its log; subclasses name it, start it and say when it is
    ready (``_wait_ready``)."""

    what: ClassVar[str] = "the server"  # how errors name it
    stop_deadline_s: ClassVar[float] = 10.0

    process: asyncio.subprocess.Process
    log: Path

    @staticmethod
    async def spawn(
        argv: list[str], *, log: Path, env: Mapping[str, str], cwd: Path | None = None
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` with ``env`` only, its stdout and stderr appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as sink:
            return await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )

    async def until_ready(self) -> Self:
        """Wait until the server is ready (``_wait_ready``); if that fails, times out or is
        cancelled, stop the child before re-raising, so a failed start leaves no process."""
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    @abstractmethod
    async def _wait_ready(self) -> None:
        """Return once the server serves; BenchError when it does not in time."""

    def check_running(self) -> None:
        """BenchError naming the exit status and the log's tail if the process has ended."""
        if self.process.returncode is not None:
            raise BenchError(
                f"{self.what} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process wrote."""
        return log_tail(self.log, lines)

    async def stop(self) -> None:
        """SIGTERM (then SIGKILL) and wait for the exit; idempotent."""
        await stop_child(self.process, grace_s=self.stop_deadline_s)
