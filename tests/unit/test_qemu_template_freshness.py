"""A QEMU template is handed out only for the image as it is when the restore begins: one whose
image was replaced (a rollout, ``hearth image build``) while the template was built is not."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hearth.errors import SnapshotError
from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.templates import Template, template_key
from hearth.vm.types import VmSpec
from tests.conftest import write_manifest

TemplateBuild = Callable[[ImageDir, VmSpec, Path], Awaitable[None]]


def _image(directory: Path) -> ImageDir:
    image = ImageDir(directory)
    directory.mkdir()
    for path in (image.rootfs, image.kernel, image.vmlinux, image.initramfs):
        path.write_bytes(b"v1")
    write_manifest(directory, sizes={p.name: 2 for p in (image.rootfs, image.kernel)})
    return image


def _replace(path: Path, data: bytes) -> None:
    """What a rollout or a publish does: a new file renamed over the path."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def _saving(during: Callable[[ImageDir], None] | None = None) -> TemplateBuild:
    """A stand-in for booting and saving the template VM; ``during`` runs as it is saved."""

    async def build(image: ImageDir, spec: VmSpec, directory: Path) -> None:
        for file in Template.files():
            (directory / file.name).write_bytes(b"saved")
        if during is not None:
            during(image)

    return build


@pytest.fixture
def backend(tmp_path: Path) -> QemuBackend:
    return QemuBackend(state_dir=tmp_path / "state", accel=Accel("tcg", "test"))


async def test_a_template_is_handed_out_for_the_image_it_was_built_on(
    backend: QemuBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, spec = _image(tmp_path / "image"), VmSpec()
    monkeypatch.setattr(backend, "_build_template", _saving())
    template = await backend._template_for(image, spec)
    assert template.key == template_key(image, spec, backend.accel)
    assert await backend._template_for(image, spec) == template  # found, not built again


async def test_a_template_whose_image_was_replaced_during_its_build_is_not_handed_out(
    backend: QemuBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _image(tmp_path / "image")
    # A rollout (or a publish) lands while the template VM, booted on v1, is being saved.
    rollout = _saving(during=lambda image: _replace(image.rootfs, b"v2"))
    monkeypatch.setattr(backend, "_build_template", rollout)
    # Restored over v2, the template's disk layer and memory (made on v1) would corrupt it.
    with pytest.raises(SnapshotError, match="changed while its template was being built"):
        await backend._template_for(image, VmSpec())
