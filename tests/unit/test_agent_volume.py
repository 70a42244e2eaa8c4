"""The agent's volume helpers on real files: the disk found by its serial, the superblock read
from the file itself (not from cached blocks)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from hearth_agent.errors import VolumeNotFound
from hearth_agent.log import JsonLogger
from hearth_agent.volume import (
    EXT4_MAGIC,
    EXT4_MAGIC_OFFSET,
    VolumeRoutes,
    find_disk,
    has_ext4,
)


def _disk(sys_block: Path, name: str, serial: str | None) -> None:
    (sys_block / name).mkdir(parents=True)
    if serial is not None:
        (sys_block / name / "serial").write_text(serial + "\n", encoding="ascii")


def test_the_virtio_disk_with_the_serial_is_found_and_other_devices_are_passed_over(
    tmp_path: Path,
) -> None:
    _disk(tmp_path, "loop0", "hearth-slot")  # not a virtio disk, whatever it says
    _disk(tmp_path, "vda", None)  # the root disk: no serial
    _disk(tmp_path, "vdb", "hearth-slot")
    _disk(tmp_path, "vdc", "hearth-workspace")

    assert find_disk("hearth-workspace", sys_block=tmp_path) == Path("/dev/vdc")
    assert find_disk("hearth-slot", sys_block=tmp_path) == Path("/dev/vdb")


def test_a_disk_that_never_appears_is_not_found_in_time(tmp_path: Path) -> None:
    _disk(tmp_path, "vdb", "someone-else")
    with pytest.raises(VolumeNotFound, match="'hearth-workspace'"):
        find_disk("hearth-workspace", sys_block=tmp_path, timeout_s=0.1)


def test_the_ext4_magic_is_read_from_the_file_itself(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(8192))
    formatted = bytearray(8192)
    formatted[EXT4_MAGIC_OFFSET : EXT4_MAGIC_OFFSET + 2] = EXT4_MAGIC
    made = tmp_path / "ext4.img"
    made.write_bytes(bytes(formatted))

    assert not has_ext4(blank)
    assert has_ext4(made)


def test_the_claim_survey_looks_at_the_disks_only_beside_a_root_disk(tmp_path: Path) -> None:
    stream = io.StringIO()
    routes = VolumeRoutes(workspace=tmp_path / "workspace", logger=JsonLogger(stream=stream))
    sys_block = tmp_path / "block"
    _disk(sys_block, "vda", None)

    routes.survey(sys_block=sys_block)  # a Browser VM: its root disk alone
    assert stream.getvalue() == ""

    _disk(sys_block, "vdb", "hearth-slot")
    routes.survey(sys_block=sys_block)
    [line] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert line["event"] == "disks_surveyed"
    assert line["serials"] == {"vdb": "hearth-slot"}  # vda has no serial file here
    assert isinstance(line["ms"], int)
