"""QMP control of a running QEMU (via the qemu.qmp library), never HMP text scraping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from hearth.errors import SnapshotError, VmError
from hearth.vm.readiness import Backoff, Deadline

# qemu.qmp logs every refused connect at ERROR; Monitor.connect retries those on purpose.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class Monitor:
    """A connected QMP session to one VM."""

    def __init__(self, vm_id: str, client: QMPClient) -> None:
        self._vm_id = vm_id
        self._client = client

    @classmethod
    async def connect(cls, vm_id: str, socket: Path, *, deadline: Deadline) -> Monitor:
        """Connect to QEMU's QMP socket, retrying until it appears or the deadline passes."""
        last = "socket never appeared"
        for delay in Backoff(initial_s=0.01, cap_s=0.2).delays():
            if socket.exists():
                client = QMPClient(vm_id)
                try:
                    await asyncio.wait_for(client.connect(str(socket)), deadline.remaining() + 0.1)
                    return cls(vm_id, client)
                except (QMPError, OSError, EOFError, TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
            if deadline.expired:
                break
            await asyncio.sleep(min(delay, deadline.remaining()))
        raise VmError(f"VM {vm_id}: QMP not reachable at {socket}: {last}")

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command; QEMU's refusal becomes VmError."""
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), 30)
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            raise VmError(f"VM {self._vm_id}: QMP {command} failed: {exc}") from exc

    async def status(self) -> str:
        """QEMU's run state, e.g. ``running``, ``paused``, ``inmigrate``."""
        result = await self.execute("query-status")
        return str(result["status"])

    async def wait_migration(self, *, deadline: Deadline) -> None:
        """Wait until an outgoing or incoming migration reports ``completed``."""
        for delay in Backoff(initial_s=0.01, cap_s=0.1).delays():
            info = await self.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise SnapshotError(
                    f"VM {self._vm_id}: migration {status}: {info.get('error-desc', 'no detail')}"
                )
            if deadline.expired:
                raise SnapshotError(
                    f"VM {self._vm_id}: migration still {status} after {deadline.seconds:.0f} s"
                )
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Disconnect (QEMU keeps running)."""
        with contextlib.suppress(QMPError, OSError, EOFError):
            await self._client.disconnect()
