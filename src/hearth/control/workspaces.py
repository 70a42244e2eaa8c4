"""Each user's persistent workspace: a volume that outlives their CLI VMs.

A user's first CLI VM creates it: a blank volume of ``HEARTH_WORKSPACE_SIZE_MIB`` on the node
(``<state dir>/volumes/<id>.qcow2``), LUKS-encrypted under a key of its own that the store keeps
sealed by the vault (bound to the workspace's id), never in clear. Every CLI VM of that user that
becomes ready gets it hot-plugged, and its agent mounts it where commands run (formatting it the
first time), so replacing a CLI VM (a new image, a failure, a destroy and create) keeps the
user's repositories. One VM holds it at a time: a second CLI VM of the same user runs without it
(logged). Before a VM is destroyed its agent syncs and unmounts it; a hibernated VM keeps it
attached and wakes with it.

``DELETE /api/users/{id}/workspace`` removes it (409 while a VM holds it). Its full size counts
in its user's disk quota (``quotas.DiskQuota``) from their first CLI VM's admission on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid

from hearth.agent_client import AgentClient, AgentError
from hearth.config import Settings
from hearth.control.row_seal import RowSeal
from hearth.credentials.vault import CredentialVault
from hearth.errors import Conflict, HearthError, NotFound, NotSupported, WorkspaceUnusable
from hearth.logging import get_logger
from hearth.node.interface import Node
from hearth.store import Store, VmRecord
from hearth.store.records import WORKSPACE_KEY_SEAL, WorkspaceRecord
from hearth.vm.types import Vm, VmType, Volume

_log = get_logger("control.workspaces")
SERIAL = "hearth-workspace"  # its disk's serial when hot-plugged (a virtio serial: ≤ 20 bytes)
_CLAIM_TRIES = 5  # reads of a workspace that other VMs or a delete keep changing


class Workspaces:
    """Creates, attaches and removes users' workspace volumes."""

    def __init__(
        self, *, settings: Settings, store: Store, node: Node, vault: CredentialVault
    ) -> None:
        self.size_mib = settings.workspace_size_mib
        self.store = store
        self.node = node
        self._seal = RowSeal(vault, WORKSPACE_KEY_SEAL)

    @property
    def enabled(self) -> bool:
        """Whether users get workspaces (``HEARTH_WORKSPACE_SIZE_MIB`` > 0)."""
        return self.size_mib > 0

    async def prepare(self) -> None:
        """Make the first workspace fast: the node prepares volumes of the set size now (QEMU
        makes their encrypted prototype, ≈ 2.6 s of CPU, ahead of the first user)."""
        if self.enabled:
            await self.node.prepare_volumes(self.size_mib)

    async def counted_mib(self, user_id: str) -> int:
        """What ``user_id``'s workspace counts against their disk quota as a CLI VM of theirs is
        created (``DiskQuota``): its full size, made yet or not; 0 when workspaces are off."""
        if not self.enabled:
            return 0
        existing = await self.store.workspaces.get(user_id)
        return existing.size_mib if existing else self.size_mib

    async def attach(self, user_id: str, vm: Vm) -> None:
        """Give a user's CLI VM (healthy, not yet theirs to use) their workspace, made first if
        need be, mounted by its agent; a no-op for other VMs, when workspaces are off, or when
        another active VM of theirs holds it. Errors propagate (the VM, which holds it from
        before the plug, is then failed or destroyed by the caller, which frees it); a volume
        that will not attach or mount in a VM that runs on is WorkspaceUnusable."""
        if not self.enabled or vm.spec.vm_type is not VmType.CLI:
            return
        if any(volume.serial == SERIAL for volume in vm.volumes):
            return  # attached and mounted already
        workspace = await self._claim(user_id, vm)
        if workspace is None:
            return
        volume = self._volume(workspace)
        mounted: dict[str, object] = {}
        started = time.monotonic()
        try:
            serial = await self.node.attach_volume(vm, volume)
            plugged = time.monotonic()
            if serial is not None:
                agent = AgentClient(str(vm.agent_url), vm.token, vm_id=vm.id)
                mounted = await agent.mount_workspace(serial)
        except HearthError as exc:
            raise self._unusable(workspace, vm, exc) from exc
        _log.info(
            "workspace_attached",
            vm_id=vm.id,
            user_id=user_id,
            formatted=bool(mounted.get("formatted")),
            plug_ms=round((plugged - started) * 1000),  # the node's slot swap or hot-plug
            mount_ms=round((time.monotonic() - plugged) * 1000),  # the agent's find and mount
            guest_ms=mounted.get("ms"),  # the agent's own split: find, format, mount
        )

    def _unusable(self, workspace: WorkspaceRecord, vm: Vm, exc: HearthError) -> HearthError:
        """What an attach or mount that failed with ``exc`` means: the workspace's fault
        (WorkspaceUnusable, naming it, the cause and the way out) while ``vm`` runs on and its
        agent answered; else ``exc`` itself, the VM's (it ended, or its agent did not answer:
        deleting the workspace would cost the user their files for nothing)."""
        if not self.node.alive(vm) or (isinstance(exc, AgentError) and exc.agent_code is None):
            return exc
        user_id = workspace.user_id
        return WorkspaceUnusable(
            f"the workspace {workspace.id} of user {user_id} will not attach or mount: "
            f"{exc.message[:500]}. DELETE /api/users/{user_id}/workspace removes it and the "
            "files on it; their next CLI VM then starts with a new, empty one"
        )

    async def _claim(self, user_id: str, vm: Vm) -> WorkspaceRecord | None:
        """The user's workspace (made now if they have none), recorded as held by ``vm`` before
        it is plugged in, so no other VM takes it and no delete removes it meanwhile; None when
        another active VM of theirs holds it, or the node keeps no volumes."""
        for _ in range(_CLAIM_TRIES):
            workspace = await self._ensure(user_id)
            if workspace is None:
                return None
            held_by = workspace.vm_id
            if held_by == vm.id:
                return workspace
            holder = await self._active(held_by)
            if holder is not None:
                _log.info("workspace_held", vm_id=vm.id, held_by=holder.id)
                return None
            if await self.store.workspaces.claim(workspace.id, vm.id, held_by=held_by):
                return dataclasses.replace(workspace, vm_id=vm.id)
            # Another VM claimed it, or it was deleted, since it was read: look again.
        raise Conflict(f"the workspace of user {user_id} kept changing while VM {vm.id} took it")

    def volumes_for(self, record: VmRecord, workspace: WorkspaceRecord | None) -> list[Volume]:
        """The volumes a hibernated VM wakes with: the workspace it held."""
        if workspace is None or workspace.vm_id != record.id:
            return []
        return [self._volume(workspace)]

    async def before_destroy(self, record: VmRecord, token: str | None) -> None:
        """Sync and unmount the workspace in a VM about to end (``VmService.before_destroy``)."""
        agent = await self._agent_holding(record, token)
        if agent is not None:
            answer = await agent.unmount_workspace()
            _log.info("workspace_detached", vm_id=record.id, unmounted=answer.get("unmounted"))

    async def before_hibernate(self, record: VmRecord, token: str | None) -> None:
        """Have a VM about to be hibernated write its cached workspace pages to the volume: its
        saved memory holds them, and a hibernated VM destroyed without waking would lose them."""
        agent = await self._agent_holding(record, token)
        if agent is not None:
            await agent.sync_workspace()
            _log.info("workspace_synced", vm_id=record.id)

    async def _agent_holding(self, record: VmRecord, token: str | None) -> AgentClient | None:
        """The agent of ``record``'s VM if that VM holds a workspace, else None (looked up by
        the VM: a pooled VM whose hand-out failed after the mount holds its user's workspace
        while its row still names the pool's user)."""
        workspace = await self.store.workspaces.held_by(record.id)
        if workspace is None or not record.agent_url:
            return None
        return AgentClient(record.agent_url, token, vm_id=record.id)

    async def get(self, user_id: str) -> WorkspaceRecord:
        """The user's workspace; NotFound when they have none."""
        workspace = await self.store.workspaces.get(user_id)
        if workspace is None:
            raise NotFound(f"user {user_id} has no workspace")
        return workspace

    async def holder(self, workspace: WorkspaceRecord) -> VmRecord | None:
        """The active VM that holds ``workspace``, if any."""
        return await self._active(workspace.vm_id) if workspace.vm_id else None

    async def delete(self, user_id: str) -> WorkspaceRecord:
        """Remove the user's workspace and its file; Conflict while a VM holds it (or is
        taking it)."""
        workspace = await self.get(user_id)
        holder = await self.holder(workspace)
        if holder is None and await self.store.workspaces.delete(
            workspace.id, held_by=workspace.vm_id
        ):
            self.node.remove_volume(workspace.id)
            _log.info("workspace_deleted", user_id=user_id)
            return workspace
        holder = holder or await self.holder(await self.get(user_id))
        held = f"VM {holder.id} ({holder.status.value})" if holder else "a VM starting now"
        raise Conflict(
            f"the workspace of user {user_id} is attached to {held}; destroy that VM first"
        )

    async def _ensure(self, user_id: str) -> WorkspaceRecord | None:
        """The user's workspace, made now if they have none; None where the node's VMM keeps
        no volumes (its VMs run without one, logged)."""
        existing = await self.store.workspaces.get(user_id)
        if existing is not None:
            return existing
        workspace_id = f"ws-{uuid.uuid4()}"
        key = secrets.token_urlsafe(32).encode()
        try:
            await self.node.create_volume(workspace_id, self.size_mib, key)
        except NotSupported as exc:
            _log.warning("workspaces_not_supported", user_id=user_id, reason=exc.message)
            return None
        record = WorkspaceRecord(
            id=workspace_id,
            user_id=user_id,
            size_mib=self.size_mib,
            **self._seal.seal(workspace_id, key),  # type: ignore[arg-type]
        )
        try:
            stored = await self.store.workspaces.insert(record)
        except BaseException:
            await self._drop_unless_stored(user_id, workspace_id)
            raise
        if stored.id != workspace_id:  # another create won the race: keep its volume
            self.node.remove_volume(workspace_id)
        _log.info("workspace_created", user_id=user_id, size_mib=self.size_mib)
        return stored

    async def _drop_unless_stored(self, user_id: str, workspace_id: str) -> None:
        """Remove the volume a failed or cancelled insert made, unless the user's row names it
        after all (a store call runs to completion under a cancel, so that insert may have
        committed). Kept when the store cannot say: the next start's ``reap_orphans`` decides."""
        try:
            stored = await self.store.workspaces.get(user_id)
        except (Exception, asyncio.CancelledError):  # the insert's own error is the one raised
            _log.warning("workspace_volume_kept", workspace_id=workspace_id)
            return
        if stored is None or stored.id != workspace_id:
            self.node.remove_volume(workspace_id)

    async def release(self, vm_id: str) -> bool:
        """Give up the workspace VM ``vm_id`` claimed, if any (a hand-out that failed before
        the VM was the user's); whether it holds none now."""
        workspace = await self.store.workspaces.held_by(vm_id)
        if workspace is None:
            return True
        return await self.store.workspaces.claim(workspace.id, None, held_by=vm_id)

    async def reap_orphans(self) -> list[str]:
        """Remove the volume files no workspace row names (made by a create whose row was never
        written: its controller died, or its insert failed, in between) and the scratch files of
        volume prototypes a process left; what was removed. Run at the controller's start,
        before any create; a volume whose row exists is kept, whatever its state."""
        removed = self.node.reap_volumes(await self.store.workspaces.ids())
        if removed:
            _log.info("workspace_volumes_reaped", files=removed)
        return removed

    def _volume(self, workspace: WorkspaceRecord) -> Volume:
        key = self._seal.open(workspace)
        if key is None:
            raise Conflict(f"the key of workspace {workspace.id} does not open")
        return Volume(
            path=self.node.volume_path(workspace.id),
            key=key,
            serial=SERIAL,
            size_mib=workspace.size_mib,
        )

    async def _active(self, vm_id: str | None) -> VmRecord | None:
        if vm_id is None:
            return None
        try:
            record = await self.store.vms.get(vm_id)
        except HearthError:
            return None
        return record if record.is_active else None
