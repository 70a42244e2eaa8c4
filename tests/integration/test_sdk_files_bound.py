"""A single file's download (``download``, ``read``, ``read_stream``, sync and async, and
``hearth files get``) takes at most ``max_bytes``, against the API over VMs whose agents are real
processes on loopback: a file of exactly the bound comes whole, one byte more is refused with
``invalid_archive`` and leaves the local file that was there as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hearth.sdk import AsyncHearth, Hearth, InvalidArchive
from tests.conftest import hearth_cli
from tests.integration.sdk_fixtures import *  # noqa: F403
from tests.integration.sdk_fixtures import Live
from tests.unit.test_sdk_download_file_cap import fetched

SIZE = 256 * 1024 + 3
DATA = os.urandom(SIZE)


@pytest.mark.parametrize("form", ["path", "bytes", "stream"])
async def test_a_file_of_exactly_max_bytes_comes_whole_and_one_byte_less_refuses_it(
    live: Live, form: str, tmp_path: Path
) -> None:
    here = tmp_path / "here"  # tmp_path holds the agents' and the API's files too
    here.mkdir()
    local = here / "big.bin"
    with Hearth(live.url, live.keys["ann"]) as sync:
        vm = sync.vms.create("cli")
        vm.files.write("big.bin", DATA)
        async with AsyncHearth(live.url, live.keys["ann"]) as aclient:
            for files in (vm.files, (await aclient.vms.get(vm.id)).files):
                local.write_bytes(b"mine")
                assert await fetched(files, form, local, SIZE) == DATA
                local.write_bytes(b"mine")
                with pytest.raises(InvalidArchive) as refused:
                    await fetched(files, form, local, SIZE - 1)
                assert refused.value.code == "invalid_archive"
                assert f"larger than max_bytes ({SIZE - 1} bytes)" in str(refused.value)
                assert os.listdir(here) == ["big.bin"]  # nothing partial beside it
                assert local.read_bytes() == b"mine"


def test_hearth_files_get_bounds_a_file_by_max_bytes(live: Live, tmp_path: Path) -> None:
    env = {"HEARTH_URL": live.url, "HEARTH_API_KEY": live.keys["ann"]}
    with Hearth(live.url, live.keys["ann"]) as client:
        vm = client.vms.create("cli")
        vm.files.write("big.bin", DATA)
    here = tmp_path / "here"
    here.mkdir()
    local = here / "big.bin"
    local.write_bytes(b"mine")

    def get(*args: str) -> tuple[int, str]:
        got = hearth_cli("files", "get", vm.id, "big.bin", *args, env=env, timeout=120)
        return got.returncode, " ".join(got.stderr.split())

    code, stderr = get(str(local), "--max-bytes", str(SIZE - 1))
    assert code == 1, stderr
    assert "invalid_archive" in stderr
    assert f"larger than max_bytes ({SIZE - 1} bytes)" in stderr
    assert os.listdir(here) == ["big.bin"]
    assert local.read_bytes() == b"mine"

    code, stderr = get(str(local), "--max-bytes", str(SIZE))
    assert code == 0, stderr
    assert local.read_bytes() == DATA
