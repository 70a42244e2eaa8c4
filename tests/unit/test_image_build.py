"""``build_image`` around its phases: two builds of one image at once, what a killed build
left, and what a failed one leaves (nothing). debootstrap, the kernel download and the
initramfs (busybox, cpio) are stood in for; the ext4 image, the agent install and its
verification are real (mkfs.ext4, debugfs)."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import BuildFailed
from hearth.images import build
from hearth.images.build import build_image
from hearth.images.kernel import Kernel
from hearth.images.manifest import ImageDir, ImageManifest
from hearth.images.recipes import Recipe
from tests.conftest import require_tools

TINY = Recipe(name="tiny", description="a test image", packages=(), disk_mib=32)


class QuietProgress:
    """A Progress that keeps its notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def phase(self, name: str, detail: str = "") -> AbstractContextManager[None]:
        return nullcontext()

    def note(self, message: str) -> None:
        self.notes.append(message)


class Phases:
    """Stand-ins for the download and debootstrap phases; counts the rootfs builds and can hold
    the first one until a second build reaches it too (or a while has passed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rootfs_builds = 0
        self.second_arrived = threading.Event()
        self._lock = threading.Lock()

    def fetch_kernel(self, cache_dir: Path) -> Kernel:
        directory = self.root / "kernel"
        (directory / "modules").mkdir(parents=True, exist_ok=True)
        (directory / "vmlinuz").write_bytes(b"bzImage")
        (directory / "vmlinux").write_bytes(b"\x7fELF kernel")
        return Kernel(package="linux-image-test", version="1", directory=directory)

    def build_initramfs(self, modules_dir: Path, out: Path) -> str:
        out.write_bytes(b"initramfs")
        return hashlib.sha256(b"initramfs").hexdigest()

    def ensure_rootfs(self, recipe: Recipe, *, cache_dir: Path, suite: str, mirror: str) -> Path:
        with self._lock:
            self.rootfs_builds += 1
            first = self.rootfs_builds == 1
        if first:
            self.second_arrived.wait(timeout=1.5)
        else:
            self.second_arrived.set()
        tree = cache_dir / "rootfs" / "tiny-tree" / "root"
        (tree / "usr/bin").mkdir(parents=True, exist_ok=True)
        (tree / "usr/bin/python3").write_bytes(b"#!python")
        return tree


@pytest.fixture
def phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Phases:
    require_tools("mkfs.ext4", "debugfs", "e2fsck")
    stand_in = Phases(tmp_path / "phases")
    monkeypatch.setattr(build, "fetch_kernel", stand_in.fetch_kernel)
    monkeypatch.setattr(build, "build_initramfs", stand_in.build_initramfs)
    monkeypatch.setattr(build, "ensure_rootfs", stand_in.ensure_rootfs)
    return stand_in


@pytest.fixture
def image_settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_CACHE_DIR": str(tmp_path / "cache"),
            "HEARTH_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
        }
    )


def _build(settings: Settings, out: Path, progress: QuietProgress) -> tuple[ImageManifest, bool]:
    return build_image(TINY, settings=settings, out_dir=out, progress=progress)


def test_two_builds_of_one_image_at_once_build_it_once_and_both_get_it(
    phases: Phases, image_settings: Settings, tmp_path: Path
) -> None:
    outs = [tmp_path / "out one", tmp_path / "out two"]
    progress = [QuietProgress(), QuietProgress()]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_build, [image_settings] * 2, outs, progress))

    assert phases.rootfs_builds == 1
    assert sorted(cached for _, cached in results) == [False, True]
    assert results[0][0].content_hash == results[1][0].content_hash
    for out in outs:
        manifest = ImageDir(out).manifest
        assert manifest is not None
        assert manifest.files_present(out)
    # The one that waited said why it did.
    waited = [p for p in progress if p.notes]
    assert len(waited) == 1
    assert "another image build" in waited[0].notes[0]


def test_a_killed_builds_half_made_dirs_are_removed_by_the_next_build(
    phases: Phases, image_settings: Settings, tmp_path: Path
) -> None:
    cache = image_settings.cache_dir
    left = [cache / "images" / ".tiny-k1ll3d", cache / "rootfs" / ".tiny-k1ll3d"]
    for directory in left:
        (directory / "root").mkdir(parents=True)
        (directory / "root" / "big").write_bytes(b"x" * 4096)
    kept = cache / "rootfs" / "tiny-0123"
    kept.mkdir(parents=True)

    manifest, cached = _build(image_settings, tmp_path / "out", QuietProgress())

    assert not cached
    assert ImageDir(tmp_path / "out").manifest == manifest
    assert [d for d in left if d.exists()] == []
    assert kept.is_dir()  # a finished cache entry is not a leftover


def test_a_full_disk_fails_the_build_saying_where_to_free_space_and_what_to_run(
    phases: Phases, image_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "vmlinuz"))

    monkeypatch.setattr(build.shutil, "copyfile", full)
    with pytest.raises(BuildFailed) as caught:
        _build(image_settings, tmp_path / "out", QuietProgress())

    message = caught.value.message
    assert "No space left on device" in message
    assert f"free space in {image_settings.cache_dir}" in message
    assert "hearth image build --recipe tiny again" in message
    # Nothing half-built stays behind to be taken for an image.
    images = image_settings.cache_dir / "images"
    assert [p.name for p in images.iterdir()] == []
    assert ImageDir(tmp_path / "out").manifest is None


def test_a_failed_initramfs_step_leaves_no_temp_file_and_no_open_fd(
    phases: Phases,
    image_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def broken(modules_dir: Path, out: Path) -> str:
        raise BuildFailed("/usr/bin/busybox is dynamically linked; install busybox-static")

    monkeypatch.setattr(build, "build_initramfs", broken)
    fds = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(BuildFailed, match="busybox-static"):
            _build(image_settings, tmp_path / "out", QuietProgress())
    assert list(temp.iterdir()) == []
    assert sorted(os.listdir("/proc/self/fd")) == fds
