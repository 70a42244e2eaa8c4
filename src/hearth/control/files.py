"""FileService: the files of a CLI VM's workspace, through its agent, streamed both ways.

Nothing of a file is held here: an upload goes on to the agent chunk by chunk as the client sends
it, and a download goes on to the client as the agent sends it. The agent confines every path
to the VM's workspace and writes atomically (``hearth_agent.files``); this service checks who
may reach the VM and that it is a ready CLI VM (``ExecService.runnable``, the one check every
route that works inside a VM makes), and holds uploads to ``HEARTH_FILES_MAX_BYTES``: the
agent is told the cap and gets at most one byte more than it, so an upload over it is refused
by the agent, which keeps nothing of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from hearth.agent_client import AgentClient
from hearth.agent_download import AgentDownload
from hearth.config import Settings
from hearth.control.execs import ExecService
from hearth.control.vms import VmService
from hearth.errors import FileTooLarge


@dataclass(frozen=True)
class FileUpload:
    """What a client sends: the bytes as they come (a client that goes away mid-body makes them
    raise a HearthError, which ends the upload to the agent unfinished, so it keeps nothing),
    whether they are a tar, the length it declared if any, and the file's mode (octal)."""

    chunks: AsyncIterable[bytes]
    archive: bool = False
    declared: int | None = None
    mode: str | None = None


class FileService:
    """Writes, reads, lists and removes files in CLI VMs' workspaces."""

    def __init__(self, *, settings: Settings, vms: VmService, execs: ExecService) -> None:
        self.settings = settings
        self.vms = vms
        self.execs = execs

    async def _agent(self, vm_id: str, user_id: str | None) -> AgentClient:
        return await self.execs.agent(vm_id, user_id)

    def _too_large(self, what: str) -> FileTooLarge:
        return FileTooLarge(
            f"{what} exceeds the limit of {self.settings.files_max_bytes} bytes "
            "(HEARTH_FILES_MAX_BYTES)"
        )

    async def write(
        self, vm_id: str, user_id: str | None, path: str, upload: FileUpload
    ) -> dict[str, Any]:
        """Write the file at ``path`` (or extract the tar into the directory there)."""
        cap = self.settings.files_max_bytes
        if upload.declared is not None and upload.declared > cap:
            raise self._too_large(f"a body of {upload.declared} bytes")
        agent = await self._agent(vm_id, user_id)
        return await agent.files_write(
            path,
            _at_most(self._using(vm_id, upload.chunks), cap + 1),
            archive=upload.archive,
            max_bytes=cap,
            mode=upload.mode,
        )

    async def read(self, vm_id: str, user_id: str | None, path: str) -> AgentDownload:
        """The file at ``path``, or the tar of the directory there, open as a stream: every
        refusal (404, 409, 422) comes before its first byte. Close it (``aclose``)."""
        agent = await self._agent(vm_id, user_id)
        return await agent.files_read(path)

    def stream(self, vm_id: str, download: AgentDownload) -> AsyncIterator[bytes]:
        """The bytes of ``download`` (from ``read``) as they arrive."""
        return self._using(vm_id, download.chunks())

    async def _using(self, vm_id: str, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, each counted as use of the VM: a transfer longer than its idle timeout
        must not see it paused half-way (only its start and end were counted)."""
        async for chunk in chunks:
            self.execs.lifetimes.touch(vm_id)
            yield chunk

    async def list(self, vm_id: str, user_id: str | None, path: str) -> dict[str, Any]:
        """The entries of the directory at ``path`` (or the one entry of a file)."""
        agent = await self._agent(vm_id, user_id)
        return await agent.files_list(path)

    async def remove(
        self, vm_id: str, user_id: str | None, path: str, *, recursive: bool
    ) -> dict[str, Any]:
        """Remove the file, symlink or (``recursive``) directory at ``path``."""
        agent = await self._agent(vm_id, user_id)
        return await agent.files_remove(path, recursive=recursive)


async def _at_most(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    """``chunks`` up to ``limit`` bytes, then the end: the agent, told a cap below ``limit``,
    refuses what it got, whole, and the rest is never read from the client."""
    sent = 0
    async for chunk in chunks:
        if sent + len(chunk) >= limit:
            yield chunk[: limit - sent]
            return
        sent += len(chunk)
        yield chunk
