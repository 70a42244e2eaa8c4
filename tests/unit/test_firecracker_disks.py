"""Per-VM copy-on-write disks for Firecracker: the reflink copy, the dm snapshot, and teardown."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hearth.errors import VmError
from hearth.tools import run_tool
from hearth.vm.firecracker import disks
from hearth.vm.firecracker.disks import (
    CowDisk,
    CowMechanism,
    choose_mechanism,
    create_cow_disk,
    dm_snapshot_unavailable,
    freeze_cow_disk,
    freeze_cow_disk_in_thread,
    remove_cow_disk,
)

MIB = 1024 * 1024


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """An 8 MiB read-only image with data in its first and last MiB and a hole between."""
    path = tmp_path / "golden.ext4"
    with path.open("wb") as f:
        f.write(b"G" * MIB)
        f.seek(7 * MIB)
        f.write(b"E" * MIB)
    path.chmod(0o444)
    return path


def test_the_mechanism_is_dm_snapshot_only_where_device_mapper_works() -> None:
    reason = dm_snapshot_unavailable()
    expected = CowMechanism.DM_SNAPSHOT if reason is None else CowMechanism.REFLINK_COPY
    assert choose_mechanism() is expected
    assert choose_mechanism(CowMechanism.REFLINK_COPY) is CowMechanism.REFLINK_COPY


def test_a_reflink_copy_is_private_sparse_and_leaves_the_base_alone(
    base: Path, tmp_path: Path
) -> None:
    before = base.read_bytes()
    disk = create_cow_disk(base, workdir=tmp_path, name="vm-1", mechanism=CowMechanism.REFLINK_COPY)
    assert disk.device == disk.cow_file == tmp_path / "disk.cow"
    assert disk.cow_file.read_bytes() == before
    assert disk.cow_file.stat().st_blocks * 512 < 4 * MIB  # the hole stayed a hole
    with disk.cow_file.open("r+b") as f:
        f.write(b"W" * 4096)
    assert base.read_bytes() == before
    assert remove_cow_disk(disk) == []
    assert not disk.cow_file.exists()
    assert remove_cow_disk(disk) == []  # idempotent


def test_freezing_a_copy_makes_a_read_only_template_layer(base: Path, tmp_path: Path) -> None:
    disk = create_cow_disk(base, workdir=tmp_path, name="vm-1", mechanism=CowMechanism.REFLINK_COPY)
    frozen = tmp_path / "disk.ext4"
    freeze_cow_disk(disk, frozen)
    assert frozen.read_bytes() == base.read_bytes()
    assert frozen.stat().st_mode & 0o777 == 0o444
    assert not disk.cow_file.exists()


async def test_a_cancelled_freeze_ends_only_after_its_copy(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teardown that follows a cancelled template build removes the dm device the copy
    reads (here a plain file stands in for it): the cancel must not return before the copy."""
    go, copying, copied = threading.Event(), threading.Event(), threading.Event()

    def held_copy(args: Sequence[str | Path], **options: Any) -> subprocess.CompletedProcess[bytes]:
        copying.set()
        go.wait(10)
        result = run_tool(args, **options)
        copied.set()
        return result

    monkeypatch.setattr(disks, "run_tool", held_copy)
    disk = CowDisk(
        mechanism=CowMechanism.DM_SNAPSHOT, base=base, device=base, cow_file=tmp_path / "disk.cow",
        dm_name="hearth-vm-1",
    )  # fmt: skip
    dest = tmp_path / "disk.ext4"
    freezing = asyncio.create_task(freeze_cow_disk_in_thread(disk, dest))
    assert await asyncio.to_thread(copying.wait, 10)
    copy_ended_first: list[bool] = []
    freezing.add_done_callback(lambda _task: copy_ended_first.append(copied.is_set()))
    freezing.cancel()
    await asyncio.wait([freezing], timeout=0.2)  # the old code ended here, the copy still held
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await freezing
    assert copy_ended_first == [True]
    assert dest.read_bytes() == base.read_bytes()


def test_the_record_form_round_trips(tmp_path: Path) -> None:
    disk = CowDisk(
        mechanism=CowMechanism.DM_SNAPSHOT,
        base=tmp_path / "golden.ext4",
        device=Path("/dev/mapper/hearth-vm-1"),
        cow_file=tmp_path / "disk.cow",
        dm_name="hearth-vm-1",
        loops=("/dev/loop3", "/dev/loop4"),
    )
    assert CowDisk.from_dict(disk.to_dict()) == disk


def test_asking_for_dm_where_it_cannot_work_says_why(base: Path, tmp_path: Path) -> None:
    reason = dm_snapshot_unavailable()
    if reason is None:
        pytest.skip("device-mapper works here")
    with pytest.raises(VmError, match="cannot use a device-mapper snapshot"):
        create_cow_disk(base, workdir=tmp_path, name="vm-1", mechanism=CowMechanism.DM_SNAPSHOT)
    assert list(tmp_path.glob("disk.cow")) == []


@pytest.fixture
def loop_of(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loop device this test attached to a file of its own (detached by device afterwards)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "other.img"
    backing.write_bytes(b"\0" * MIB)
    result = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot attach a loop device here: {result.stderr.strip()}")
    device = result.stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def test_teardown_never_detaches_a_loop_device_now_backing_someone_elses_file(
    loop_of: tuple[str, Path], tmp_path: Path
) -> None:
    device, backing = loop_of
    stale = CowDisk(
        mechanism=CowMechanism.DM_SNAPSHOT,
        base=tmp_path / "golden.ext4",
        device=Path("/dev/mapper/hearth-vm-gone"),
        cow_file=tmp_path / "disk.cow",
        dm_name="hearth-vm-gone",
        loops=(device,),
    )
    assert remove_cow_disk(stale) == []
    backing_file = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
    assert backing_file.read_text().strip() == str(backing)


def test_teardown_detaches_the_loop_devices_it_attached(
    loop_of: tuple[str, Path], tmp_path: Path
) -> None:
    device, backing = loop_of
    disk = CowDisk(
        mechanism=CowMechanism.DM_SNAPSHOT,
        base=backing,
        device=Path("/dev/mapper/hearth-vm-1"),
        cow_file=tmp_path / "disk.cow",
        dm_name="hearth-vm-1",
        loops=(device,),
    )
    assert remove_cow_disk(disk) == []
    assert not (Path("/sys/block") / Path(device).name / "loop" / "backing_file").exists()


def test_a_dm_snapshot_gives_a_private_writable_disk_and_leaves_nothing(
    base: Path, tmp_path: Path
) -> None:
    reason = dm_snapshot_unavailable()
    if reason is not None:
        pytest.skip(f"needs device-mapper: {reason}")
    before = base.read_bytes()
    disk = create_cow_disk(base, workdir=tmp_path, name="vm-t1", mechanism=CowMechanism.DM_SNAPSHOT)
    try:
        assert disk.cow_file.stat().st_blocks == 0
        with disk.device.open("r+b") as f:
            assert f.read(MIB) == b"G" * MIB
            f.seek(0)
            f.write(b"W" * 4096)
            os.fsync(f.fileno())
        assert base.read_bytes() == before
        assert 0 < disk.cow_file.stat().st_blocks * 512 < MIB
    finally:
        errors = remove_cow_disk(disk)
    assert errors == []
    assert not disk.device.exists()
    for loop in disk.loops:
        assert not (Path("/sys/block") / Path(loop).name / "loop" / "backing_file").exists()


def test_device_mapper_is_detected_from_the_kernels_misc_devices(tmp_path: Path) -> None:
    if shutil.which("dmsetup", path="/usr/sbin:/sbin") is None or os.geteuid() != 0:
        pytest.skip("needs root and dmsetup")
    with_dm, without_dm = tmp_path / "with", tmp_path / "without"
    with_dm.write_text(" 58 loop-control\n236 device-mapper\n")
    without_dm.write_text(" 58 loop-control\n")
    assert dm_snapshot_unavailable(proc_misc=with_dm) is None
    assert "no device-mapper driver" in str(dm_snapshot_unavailable(proc_misc=without_dm))
