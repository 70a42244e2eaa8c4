"""``LocalNode``: the node in the controller's own process — a VM backend, an image catalog and
the egress paths of its VMs."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from hearth.agent_answers import guest_text
from hearth.agent_bundle import AgentBundle
from hearth.agent_client import AgentClient, AgentError
from hearth.errors import ImageNotBuilt, NotSupported
from hearth.images.agent_install import install_agent
from hearth.images.layout import build_payload
from hearth.images.manifest import ImageDir
from hearth.metrics import ControllerMetrics
from hearth.node.egress import EgressPath, open_egress_path
from hearth.node.images import ImageStatus, image_status
from hearth.vm.accel import Accel
from hearth.vm.backend import VmBackend
from hearth.vm.types import Vm, VmSpec, VmState, VmType, Volume


class ImageSource(Protocol):
    """Resolves a VM type to the image it boots (``hearth.node.images.ImageCatalog``)."""

    def image_for(self, vm_type: VmType) -> ImageDir:
        """The image, or ImageNotBuilt."""
        ...


class LocalNode:
    """Implements ``hearth.node.interface.Node`` by calling a ``VmBackend`` in process."""

    def __init__(
        self,
        backend: VmBackend,
        images: ImageSource,
        *,
        egress_pins: Mapping[str, str] | None = None,
        metrics: ControllerMetrics | None = None,
        volumes_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.images = images
        self.egress_pins = dict(egress_pins or {})
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        # Users' persistent volumes (workspaces); None: this node keeps none.
        self.volumes_dir = volumes_dir

    @property
    def vmm(self) -> str:
        """The backend's name."""
        return self.backend.name

    @property
    def accel(self) -> Accel:
        """The backend's accelerator."""
        return self.backend.accel

    @property
    def can_hibernate(self) -> bool:
        """Whether the backend can."""
        return self.backend.can_hibernate

    def check_image(self, vm_type: VmType) -> None:
        """ImageNotBuilt unless an image serves ``vm_type``."""
        self.images.image_for(vm_type)

    def images_status(self) -> dict[str, ImageStatus]:
        """Each VM type's image, as the catalog resolves it."""
        return image_status(self.images.image_for)

    async def create(self, spec: VmSpec, *, vm_id: str) -> Vm:
        """Boot from the image of the spec's VM type."""
        image = self.images.image_for(spec.vm_type)
        return await self.backend.create(image, spec, vm_id=vm_id)

    def alive(self, vm: Vm) -> bool:
        """Ask the backend."""
        return self.backend.alive(vm)

    async def pause(self, vm: Vm) -> None:
        """Pause through the backend."""
        await self.backend.pause(vm)

    async def resume(self, vm: Vm) -> None:
        """Resume through the backend."""
        await self.backend.resume(vm)

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """Through the backend."""
        await self.backend.hibernate(vm, state_key)

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """Through the backend."""
        return await self.backend.wake(vm, state_key)

    async def settle_wake(self, vm: Vm) -> VmState:
        """Through the backend."""
        return await self.backend.settle_wake(vm)

    def volume_path(self, name: str) -> Path:
        """``<volumes dir>/<name>.qcow2``; NotSupported when this node keeps no volumes."""
        if self.volumes_dir is None:
            raise NotSupported("this node keeps no volumes")
        return self.volumes_dir / f"{name}.qcow2"

    async def create_volume(self, name: str, size_mib: int, key: bytes) -> Path:
        """Create it through the backend, in the volumes dir (0700)."""
        path = self.volume_path(name)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self.backend.create_volume(path, size_mib, key)
        return path

    async def prepare_volumes(self, size_mib: int) -> None:
        """The backend's preparation, in the volumes dir (a no-op when it keeps none)."""
        if self.volumes_dir is not None:
            self.volumes_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            await self.backend.prepare_volumes(self.volumes_dir, size_mib)

    def remove_volume(self, name: str) -> bool:
        """Unlink the volume's file."""
        path = self.volume_path(name)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def reap_volumes(self, keep: set[str]) -> list[str]:
        """Remove the files in the volumes dir of volumes not named in ``keep`` and the scratch
        of encrypted prototypes (``.prototype-*``, removed as soon as read unless their process
        died first): every ``*.qcow2`` there whose name is not a kept volume's; the names."""
        if self.volumes_dir is None or not self.volumes_dir.is_dir():
            return []
        removed = []
        for path in sorted(self.volumes_dir.glob("*.qcow2")):
            if path.stem not in keep and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    async def attach_volume(self, vm: Vm, volume: Volume) -> str | None:
        """Attach through the backend."""
        return await self.backend.attach_volume(vm, volume)

    async def destroy(self, vm: Vm) -> None:
        """Destroy through the backend."""
        await self.backend.destroy(vm)

    async def list_running(self) -> list[Vm]:
        """The backend's running VMs."""
        return await self.backend.list_running()

    async def disk_held(self, workdir: Path) -> int | None:
        """Every regular file directly in ``workdir`` that no other path links to (a layer
        pinned by a hard link to an image, in a subdirectory or not, is the image's), by the
        blocks it occupies; stat-ed in a thread."""
        return await asyncio.to_thread(_bytes_held, workdir)

    async def reap(self, keep: set[str]) -> list[str]:
        """Reap through the backend."""
        return await self.backend.reap(keep)

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The backend's console tail."""
        return self.backend.console_tail(vm, lines)

    async def probe_agent(self, vm: Vm, *, timeout_s: float) -> str:
        """``GET /health`` of the VM's agent, from this host; its version. What the guest says
        (a status, a version) is cut (``guest_text``) before an error or a caller quotes it."""
        if vm.agent_url is None:
            raise AgentError(f"VM {vm.id} has no agent address")
        health = await AgentClient(vm.agent_url, None, timeout_s=timeout_s, vm_id=vm.id).health()
        if health.get("status") != "ok":
            status = guest_text(repr(health.get("status")))
            raise AgentError(f"VM {vm.id}: its agent answers status {status}")
        return guest_text(health.get("version") or "")

    async def prepare(self, vm_type: VmType, spec: VmSpec) -> None:
        """The backend's template of ``spec`` on the image of ``vm_type``, built if needed."""
        await self.backend.prepare(self.images.image_for(vm_type), spec)

    async def install_agent(self, bundle: AgentBundle) -> list[str]:
        """``install-agent`` of the bundle's sources into each image a VM type boots (a no-op
        for an image that has them already); the images changed. The template key holds the
        image file's identity, so the next restore of a changed image builds a new template."""
        payload = build_payload(bundle.sources, bundle.version)
        images = []
        for vm_type in VmType:
            try:
                image = self.images.image_for(vm_type)
            except ImageNotBuilt:
                continue
            if image.rootfs not in images:
                images.append(image.rootfs)
        changed = []
        for rootfs in images:
            result = await asyncio.to_thread(install_agent, rootfs, payload)
            if result.changed:
                changed.append(str(rootfs))
        return changed

    async def open_egress(
        self,
        allow: Sequence[str],
        *,
        deny: Sequence[str] = (),
        owner: str | None = None,
        port: int = 0,
    ) -> EgressPath:
        """An egress proxy on this host's loopback, with the configured pins (tests only)."""
        return await open_egress_path(
            allow, deny=deny, owner=owner, port=port, pins=self.egress_pins, metrics=self.metrics
        )


def _bytes_held(workdir: Path) -> int | None:
    try:
        entries = list(os.scandir(workdir))
    except OSError:  # gone, or never made
        return None
    held = 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed since the listing
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            held += info.st_blocks * 512
    return held
