"""install-agent / verify / rollback on real small ext4 images, read back with debugfs."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hearth.errors import ImageNoSpace, ImageReadOnly, NoBackup, NotAnImage
from hearth.images.agent_install import (
    edit_image,
    install_agent,
    list_backups,
    rollback_image,
    verify_image,
)
from hearth.images.ext4 import Ext4Image, WriteFile
from hearth.images.layout import (
    AGENT_MANIFEST,
    AGENT_PACKAGE_DIR,
    BROWSER_SERVICE_PATH,
    INIT_PATH,
    TOKEN_FILE,
    UNIT_LINK,
    UNIT_PATH,
    build_payload,
)
from tests.conftest import hearth_cli, require_tools
from tests.integration.tmpfs import small_tmpfs_at

pytestmark = pytest.mark.usefixtures("_needs_e2fsprogs")


@pytest.fixture
def _needs_e2fsprogs() -> None:
    require_tools("mkfs.ext4", "debugfs", "e2fsck")


def make_image(tmp_path: Path, *, size: str = "32M", name: str = "rootfs.ext4") -> Path:
    """A small ext4 image holding a Debian-like skeleton with a python3 binary stand-in."""
    tree = tmp_path / f"tree-{name}"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "usr/bin/python3").write_bytes(b"#!/bin/false\n")
    (tree / "etc/hostname").write_text("golden\n")
    image = tmp_path / name
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, image, size], check=True)
    return image


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def debugfs_cat(image: Path, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", image], capture_output=True, check=True
    ).stdout


def test_verify_names_everything_missing_from_an_image_without_agent(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    report = verify_image(image)
    assert not report.ok
    text = "\n".join(report.problems)
    assert AGENT_MANIFEST in text
    assert UNIT_PATH in text
    assert UNIT_LINK in text
    assert INIT_PATH in text
    assert BROWSER_SERVICE_PATH in text
    assert f"{AGENT_PACKAGE_DIR}/server.py" in text


def test_install_agent_writes_files_unit_and_enabled_symlink_readable_by_debugfs(
    tmp_path: Path,
) -> None:
    image = make_image(tmp_path)
    result = install_agent(image)
    assert result.changed
    assert verify_image(image).ok
    payload = build_payload()
    for path, data in payload.files.items():
        assert debugfs_cat(image, path) == data
    ext4 = Ext4Image(image)
    link = ext4.stat(UNIT_LINK)
    assert link is not None
    assert link.kind == "symlink"
    assert link.link_target == UNIT_PATH
    for executable in (INIT_PATH, BROWSER_SERVICE_PATH):
        entry = ext4.stat(executable)
        assert entry is not None
        assert entry.mode == 0o755
        assert (entry.uid, entry.gid) == (0, 0)
    unit = debugfs_cat(image, UNIT_PATH).decode()
    # Both ways of starting the agent keep its token on the guest's tmpfs, never on the disk.
    assert TOKEN_FILE.startswith("/run/")
    assert f"--token-file {TOKEN_FILE} " in unit
    assert f"--token-file {TOKEN_FILE} " in debugfs_cat(image, INIT_PATH).decode()
    for line in (
        "After=network-online.target",
        "Wants=network-online.target",
        "Restart=always",
        "RestartSec=0.5",
        "StandardOutput=journal",
        "WantedBy=multi-user.target",
    ):
        assert line in unit
    fsck = subprocess.run(["e2fsck", "-fn", image], capture_output=True, check=False)
    assert fsck.returncode == 0, fsck.stdout


def test_install_agent_twice_is_a_no_op_without_new_backup(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    install_agent(image)
    digest, backups = sha256(image), list_backups(image)
    again = install_agent(image)
    assert not again.changed
    assert sha256(image) == digest
    assert list_backups(image) == backups


def test_upgrade_keeps_backup_and_rollback_restores_it_idempotently(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    install_agent(image)
    old_digest = sha256(image)
    current = build_payload()
    newer_files = dict(current.files)
    newer_files[f"{AGENT_PACKAGE_DIR}/__init__.py"] += b"# upgraded\n"
    newer = replace(current, files=newer_files, manifest=current.manifest + b" ")
    upgraded = install_agent(image, newer)
    assert upgraded.changed
    assert upgraded.backup is not None
    assert sha256(upgraded.backup) == old_digest
    assert verify_image(image, newer).ok
    assert not verify_image(image).ok

    used = rollback_image(image)
    assert used == upgraded.backup
    assert sha256(image) == old_digest
    assert verify_image(image).ok
    rollback_image(image)
    assert sha256(image) == old_digest


def test_each_edit_keeps_only_the_newest_backups_and_rollback_still_restores_the_last(
    tmp_path: Path,
) -> None:
    image = make_image(tmp_path)
    digests = []
    for release in range(5):
        digests.append(sha256(image))
        edit_image(image, [WriteFile(f"/etc/release-{release}", f"{release}\n".encode())])
    backups = list_backups(image)
    assert [sha256(b) for b in backups] == digests[-2:]  # the newest two
    assert sorted(p.name for p in backups[0].parent.iterdir()) == [b.name for b in backups]

    assert rollback_image(image) == backups[-1]
    assert sha256(image) == digests[-1]
    assert list_backups(image) == backups


def test_rollback_without_backup_is_a_clear_error(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    with pytest.raises(NoBackup, match="no backup"):
        rollback_image(image)


def test_a_file_that_is_not_ext4_is_refused_and_left_untouched(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.img"
    bogus.write_bytes(os.urandom(256 * 1024))
    digest = sha256(bogus)
    with pytest.raises(NotAnImage, match="not an ext4"):
        install_agent(bogus)
    with pytest.raises(NotAnImage):
        verify_image(bogus)
    assert sha256(bogus) == digest
    assert not list_backups(bogus)


def test_a_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotAnImage, match="no such file"):
        install_agent(tmp_path / "absent.ext4")


def test_a_read_only_image_is_refused_and_left_untouched(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    image.chmod(0o444)
    digest = sha256(image)
    with pytest.raises(ImageReadOnly, match="read-only"):
        install_agent(image)
    assert sha256(image) == digest
    assert image.stat().st_mode & 0o777 == 0o444


def test_an_image_whose_filesystem_is_full_is_refused_and_left_untouched(tmp_path: Path) -> None:
    tree = tmp_path / "full-tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/python3").write_bytes(b"#!/bin/false\n")
    (tree / "filler").write_bytes(os.urandom(2 * 1024 * 1024))
    image = tmp_path / "full.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", tree, image, "4M"], check=True)
    # A second copy of the filler takes every block left (debugfs stops when the disk is full).
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {tree / 'filler'} /filler2", image],
        capture_output=True,
        check=False,
    )
    digest = sha256(image)
    with pytest.raises(ImageNoSpace, match="full"):
        install_agent(image)
    assert sha256(image) == digest
    assert not list_backups(image)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, so that the host side runs out of space for real."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    with small_tmpfs_at(mountpoint, size="24m"):
        yield mountpoint


def test_no_host_space_for_the_working_copy_is_refused_and_image_untouched(
    small_tmpfs: Path,
) -> None:
    tree = small_tmpfs.parent / "tree-space"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/python3").write_bytes(b"#!/bin/false\n")
    (tree / "data").write_bytes(os.urandom(14 * 1024 * 1024))
    image = small_tmpfs / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, image, "20M"], check=True)
    digest = sha256(image)
    with pytest.raises(ImageNoSpace, match="MiB free"):
        install_agent(image)
    assert sha256(image) == digest
    assert [p.name for p in small_tmpfs.iterdir()] == ["rootfs.ext4"]


def test_cli_verify_exits_nonzero_naming_what_is_missing(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    result = hearth_cli("image", "verify", str(image))
    assert result.returncode == 1
    assert UNIT_LINK in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_install_agent_then_verify_then_rollback(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    installed = hearth_cli("image", "install-agent", str(image))
    assert installed.returncode == 0, installed.stderr
    assert "installed agent" in installed.stdout
    assert hearth_cli("image", "verify", str(image)).returncode == 0
    again = hearth_cli("image", "install-agent", str(image))
    assert "nothing to do" in again.stdout
    rolled = hearth_cli("image", "rollback", str(image))
    assert rolled.returncode == 0, rolled.stderr
    assert hearth_cli("image", "verify", str(image)).returncode == 1


def test_cli_reports_a_non_image_without_traceback(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    result = hearth_cli("image", "install-agent", str(bogus))
    assert result.returncode == 1
    assert "not_an_image" in result.stderr
    assert "Traceback" not in result.stderr
