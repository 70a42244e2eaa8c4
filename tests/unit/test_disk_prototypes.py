"""The encrypted-overlay prototypes a QEMU backend keeps in memory: one per backing in use, and
none for a backing that was replaced (a rolled-out image) or removed (a pruned template)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hearth.vm.qemu import disks
from hearth.vm.qemu.disk_keys import DiskKey
from hearth.vm.qemu.disks import Overlays


class QemuImgStandIn:
    """Stands in for ``qemu-img create`` (≈ 2.6 s of CPU per LUKS image): writes a distinct
    prototype per call and counts the calls. The cache around it is what is under test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Path] = []
        monkeypatch.setattr(disks, "create_overlay", self.overlay)
        monkeypatch.setattr(disks, "create_blank", self.blank)

    def overlay(self, backing: Path, path: Path, *, backing_format: str, key: DiskKey) -> int:
        self.calls.append(backing)
        path.write_bytes(f"prototype {len(self.calls)} on {backing}".encode())
        return 0

    def blank(self, path: Path, size_mib: int, key: DiskKey) -> None:
        path.write_bytes(f"volume of {size_mib} MiB".encode())


@pytest.fixture
def qemu_img(monkeypatch: pytest.MonkeyPatch) -> QemuImgStandIn:
    return QemuImgStandIn(monkeypatch)


def replace_file(path: Path, data: bytes) -> None:
    """Rename a new file over ``path``, as a rollout replaces an image (a new inode)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def test_a_replaced_backing_drops_the_prototype_of_the_old_one(
    tmp_path: Path, qemu_img: QemuImgStandIn
) -> None:
    image = tmp_path / "rootfs.ext4"
    image.write_bytes(b"release 1")
    overlays = Overlays()
    first = overlays.prepare(image, "raw", tmp_path)
    assert overlays.prepare(image, "raw", tmp_path) == first  # made once, then reused
    for release in range(2, 5):
        replace_file(image, f"release {release}".encode())
        assert overlays.prepare(image, "raw", tmp_path) != first
        assert overlays.made() == ["overlay"]
    assert len(qemu_img.calls) == 4
    assert not list(tmp_path.glob(".prototype-*"))


def test_a_removed_backing_drops_its_prototype_and_volumes_stay(
    tmp_path: Path, qemu_img: QemuImgStandIn
) -> None:
    overlays = Overlays()
    overlays.prepare_volume(tmp_path, 64)
    templates = []
    for key in ("a", "b", "c"):
        (tmp_path / key).mkdir()
        disk = tmp_path / key / "disk.qcow2"
        disk.write_bytes(key.encode())
        templates.append(disk)
    overlays.prepare(templates[0], "qcow2", tmp_path)
    overlays.prepare(templates[1], "qcow2", tmp_path)
    assert sorted(overlays.made()) == ["overlay", "overlay", "volume"]  # both still there

    templates[0].unlink()  # its template was pruned: nothing can layer on it any more
    overlays.prepare(templates[2], "qcow2", tmp_path)
    assert sorted(overlays.made()) == ["overlay", "overlay", "volume"]
    overlays.prepare(templates[1], "qcow2", tmp_path)
    assert len(qemu_img.calls) == 3  # b's prototype was kept


def test_an_overlay_is_still_made_from_a_prototype_evicted_meanwhile(
    tmp_path: Path, qemu_img: QemuImgStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "rootfs.ext4"
    image.write_bytes(b"release 1")
    overlays = Overlays()
    written: list[bytes] = []

    def write_after_a_rollout(prototype: bytes, path: Path, key: DiskKey) -> None:
        replace_file(image, b"release 2")  # a rollout lands between prepare and the write
        overlays.prepare(image, "raw", tmp_path)  # another create evicts the old prototype
        written.append(prototype)
        path.write_bytes(prototype)

    monkeypatch.setattr(disks, "_write_rekeyed", write_after_a_rollout)
    overlays.create(image, tmp_path / "vm.qcow2", backing_format="raw", key=DiskKey.generate())
    assert written == [(tmp_path / "vm.qcow2").read_bytes()]
    assert written[0].startswith(b"prototype 1 ")
    assert overlays.made() == ["overlay"]
