"""Writers of one image at once, on real small ext4 images: two edits (two CLI invocations, or
trust-ca while a rollout installs the agent), an edit and a rollback, an edit and a build's
publish take turns, so neither change is lost; an edit whose image a writer outside the lock
replaced is abandoned.
Each edit here is held right after it copied the image, where the old code let the other
writer in."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import pytest

import hearth.images.agent_install as agent_install
from hearth.errors import ImageError
from hearth.images.agent_install import edit_image, install_agent, list_backups, rollback_image
from hearth.images.build import _publish
from hearth.images.ext4 import Ext4Image, WriteFile
from hearth.images.manifest import (
    INITRAMFS_NAME,
    KERNEL_NAME,
    ROOTFS_NAME,
    VMLINUX_NAME,
    ImageDir,
)
from tests.conftest import require_tools, write_manifest
from tests.integration.test_image_agent_install import make_image, sha256

# How long an edit that copied the image waits for the other writer to get in (it never does
# once they take turns).
HOLD_S = 1.5


@pytest.fixture(autouse=True)
def _needs_e2fsprogs() -> None:
    require_tools("mkfs.ext4", "debugfs", "e2fsck")


@contextmanager
def held_after_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Edits in this process stop right after copying the image: (copied, go on)."""
    copied, go_on = threading.Event(), threading.Event()
    real = agent_install._sparse_copy

    def copy_then_hold(source: Path, dest: Path) -> None:
        real(source, dest)
        if ".edit-" in dest.name:
            copied.set()
            go_on.wait(30)

    monkeypatch.setattr(agent_install, "_sparse_copy", copy_then_hold)
    try:
        yield copied, go_on
    finally:
        go_on.set()


def test_two_processes_editing_one_image_at_once_both_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path)
    ctx = multiprocessing.get_context("fork")
    second_copied = ctx.Event()
    copies = ctx.Value("i", 0)
    real = agent_install._sparse_copy

    def copy(source: Path, dest: Path) -> None:
        with copies.get_lock():
            copies.value += 1
            first = copies.value == 1
        real(source, dest)
        if first:  # the first editor waits for the other to have copied the image too
            second_copied.wait(HOLD_S)
        else:
            second_copied.set()

    monkeypatch.setattr(agent_install, "_sparse_copy", copy)

    def write(name: str) -> None:
        edit_image(image, [WriteFile(f"/etc/{name}", f"{name}\n".encode())])

    editors = [ctx.Process(target=write, args=(name,)) for name in ("one", "two")]
    for editor in editors:
        editor.start()
    for editor in editors:
        editor.join(60)
    assert [e.exitcode for e in editors] == [0, 0]
    ext4 = Ext4Image(image)
    assert (ext4.read("/etc/one"), ext4.read("/etc/two")) == (b"one\n", b"two\n")
    assert len(list_backups(image)) == 2
    assert [p.name for p in tmp_path.iterdir() if ".edit-" in p.name] == []


def test_a_rollback_asked_for_during_an_edit_restores_what_the_edit_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path)
    edit_image(image, [WriteFile("/etc/release", b"1\n")])
    release_1 = sha256(image)
    with ThreadPoolExecutor(2) as pool, held_after_copy(monkeypatch) as (copied, go_on):
        edit = pool.submit(edit_image, image, [WriteFile("/etc/release", b"2\n")])
        assert copied.wait(30)
        rollback = pool.submit(rollback_image, image)
        wait([rollback], timeout=HOLD_S)  # before the fix it swapped release 0 in here
        go_on.set()
        edit.result(60)
        rollback.result(60)
    # The edit made release 2 (keeping release 1 as the newest backup); the rollback, after it,
    # went back one step: to release 1.
    assert sha256(image) == release_1
    assert Ext4Image(image).read("/etc/release") == b"1\n"


def test_an_edit_whose_image_was_replaced_meanwhile_is_abandoned_and_the_newer_image_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path)
    newer = make_image(tmp_path, name="newer.ext4")
    Ext4Image(newer).apply([WriteFile("/etc/newer", b"yes\n")])
    newer_digest = sha256(newer)
    real = agent_install._sparse_copy

    def copy_then_replaced(source: Path, dest: Path) -> None:
        real(source, dest)
        # A writer that does not take the directory's lock (an older hearth, a manual cp).
        os.replace(newer, image)

    monkeypatch.setattr(agent_install, "_sparse_copy", copy_then_replaced)
    with pytest.raises(ImageError, match="replaced, written or removed while it was being edited"):
        edit_image(image, [WriteFile("/etc/edited", b"yes\n")])
    assert sha256(image) == newer_digest
    assert list_backups(image) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["rootfs.ext4"]


def built_image_dir(tmp_path: Path, name: str, release: str) -> Path:
    """A cached build's directory: an ext4 rootfs saying ``release``, the kernel files and a
    manifest."""
    directory = tmp_path / name
    directory.mkdir()
    rootfs = make_image(tmp_path, name=f"{name}.ext4")
    Ext4Image(rootfs).apply([WriteFile("/etc/release", f"{release}\n".encode())])
    rootfs.rename(directory / ROOTFS_NAME)
    for kernel_file in (KERNEL_NAME, VMLINUX_NAME, INITRAMFS_NAME):
        (directory / kernel_file).write_text(release)
    write_manifest(directory, sizes={p.name: p.stat().st_size for p in directory.iterdir()})
    return directory


def test_a_build_published_during_an_edit_is_what_the_image_dir_holds_after_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = built_image_dir(tmp_path, "old", "11"), built_image_dir(tmp_path, "new", "12")
    out = tmp_path / "out"
    _publish(old, out)
    with ThreadPoolExecutor(2) as pool, held_after_copy(monkeypatch) as (copied, go_on):
        edit = pool.submit(install_agent, out / ROOTFS_NAME)
        assert copied.wait(30)
        publish = pool.submit(_publish, new, out)
        wait([publish], timeout=HOLD_S)  # before the fix it published here
        go_on.set()
        assert edit.result(60).changed
        publish.result(60)
    manifest = ImageDir(out).manifest
    assert manifest is not None
    assert manifest.files_present(out)
    assert sha256(out / ROOTFS_NAME) == sha256(new / ROOTFS_NAME)
    assert Ext4Image(out / ROOTFS_NAME).read("/etc/release") == b"12\n"
