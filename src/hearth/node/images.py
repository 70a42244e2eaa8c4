"""Which image each VM type boots from."""

from __future__ import annotations

from pathlib import Path

from hearth.config import Settings
from hearth.errors import ImageNotBuilt
from hearth.images.manifest import ImageDir
from hearth.vm.types import VmType

# Preferred recipes per VM type, best first; the minimal image serves until the others exist.
_RECIPES = {VmType.CLI: ("cli", "minimal"), VmType.BROWSER: ("browser", "minimal")}


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

    def status(self) -> dict[str, str]:
        """Per VM type: the image directory in use, or why there is none."""
        found: dict[str, str] = {}
        for vm_type in VmType:
            try:
                found[vm_type.value] = str(self.image_for(vm_type).path)
            except ImageNotBuilt as exc:
                found[vm_type.value] = f"missing: {exc.message}"
        return found
