"""Which image each VM type boots from, and preparing the restore templates of an image."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from hearth.config import Settings
from hearth.errors import HearthError, ImageNotBuilt
from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.vm.select import open_backend
from hearth.vm.types import VmType

_log = get_logger("node.images")

# Preferred recipes per VM type, best first; the minimal image serves until the others exist.
_RECIPES = {VmType.CLI: ("cli", "minimal"), VmType.BROWSER: ("browser", "minimal")}


class ImageState(StrEnum):
    """Whether a VM type has an image to boot (``/health`` shows it without a key)."""

    READY = "ready"  # a built image serves the VM type
    MISSING = "missing"  # none is built; VMs of the type cannot start


@dataclass(frozen=True, slots=True)
class ImageStatus:
    """One VM type's image: its state, and the image directory or why there is none."""

    state: ImageState
    detail: str  # READY: the image directory on the host; MISSING: which command builds one

    @property
    def text(self) -> str:
        """For the operator: the image directory, or ``missing: <why>``."""
        return self.detail if self.state is ImageState.READY else f"{self.state}: {self.detail}"


def image_status(image_for: Callable[[VmType], ImageDir]) -> dict[str, ImageStatus]:
    """Per VM type, the status of the image ``image_for`` resolves it to (or the
    ImageNotBuilt it raises)."""
    found: dict[str, ImageStatus] = {}
    for vm_type in VmType:
        try:
            found[vm_type.value] = ImageStatus(ImageState.READY, str(image_for(vm_type).path))
        except ImageNotBuilt as exc:
            found[vm_type.value] = ImageStatus(ImageState.MISSING, exc.message)
    return found


class ImageCatalog:
    """Resolves a VM type to a built image directory under the state dir (or fixed overrides)."""

    def __init__(self, settings: Settings, overrides: dict[VmType, Path] | None = None) -> None:
        self._root = settings.images_dir
        self._overrides = overrides or {}

    def image_for(self, vm_type: VmType) -> ImageDir:
        """The image to boot, or ImageNotBuilt saying which command builds it."""
        if vm_type in self._overrides:
            candidates = [ImageDir(self._overrides[vm_type])]
        else:
            candidates = [ImageDir(self._root / recipe) for recipe in _RECIPES[vm_type]]
        for image in candidates:
            if image.manifest is not None and image.manifest.files_present(image.path):
                return image
        raise ImageNotBuilt(
            f"no image for {vm_type.value} VMs in {', '.join(str(c.path) for c in candidates)}; "
            f"run: hearth image build --recipe {_RECIPES[vm_type][0]} (or minimal)"
        )


async def prepare_templates(settings: Settings, image_path: Path) -> list[tuple[str, str]]:
    """Build the restore template of every VM type that boots ``image_path`` (at its default
    size) with the configured VMM, unless it is there already; per template, its name and how
    it went. A template that cannot be built is reported, not raised: the controller builds
    it at its start as well."""
    catalog = ImageCatalog(settings)
    wanted = []
    for vm_type in VmType:
        try:
            image = catalog.image_for(vm_type)
        except ImageNotBuilt:
            continue
        if image.path.resolve() == image_path.resolve():
            wanted.append((vm_type, image))
    if not wanted:
        return []
    try:
        backend = open_backend(settings)
    except HearthError as exc:
        return [("(none)", f"not prepared: {exc.message}")]
    outcomes = []
    for vm_type, image in wanted:
        spec = settings.vm_spec(vm_type)
        name = f"{vm_type.value} {spec.size_key}"
        started = time.monotonic()
        try:
            await backend.prepare(image, spec)
        except HearthError as exc:
            _log.warning("template_prepare_failed", vm_type=vm_type.value, error=exc.message[:300])
            outcomes.append((name, f"failed: {exc.message[:200]}"))
            continue
        outcomes.append((name, f"ready ({time.monotonic() - started:.1f} s)"))
    return outcomes
