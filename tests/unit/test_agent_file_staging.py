"""The agent's staging entries in the workspace: an upload in flight is hidden and never
touched, what an earlier agent process left is removed where it is found, a user's own file
that merely looks alike is the user's; and a download cut off anywhere leaves no descriptor open.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth_agent.archive import tar_stream
from hearth_agent.bodies import RequestBody
from hearth_agent.files import WorkspaceFiles
from hearth_agent.log import JsonLogger
from hearth_agent.workspace import Workspace

PREFIX = ".hearth-upload-"
# What agents before staging names carried their owner left: prefix and 16 hex digits.
LEGACY_LEFTOVER = PREFIX + "0123456789abcdef"
# A name of an agent of another boot (all its processes ended with it).
EARLIER_BOOT_LEFTOVER = PREFIX + "00000000000000ff-4242-fedcba9876543210"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return workspace


@pytest.fixture
def files(root: Path) -> WorkspaceFiles:
    return WorkspaceFiles(Workspace(root), logger=JsonLogger(stream=io.StringIO()))


def this_boot() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:16]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def leave_leftovers(directory: Path) -> None:
    """What agents that crashed mid-upload leave: a staged file and a staged archive."""
    (directory / LEGACY_LEFTOVER).write_bytes(b"half a file")
    (directory / EARLIER_BOOT_LEFTOVER / "deep").mkdir(parents=True)
    (directory / EARLIER_BOOT_LEFTOVER / "deep" / "f").write_bytes(b"half an archive")


def tar_names(files: WorkspaceFiles, path: str) -> list[str]:
    download = files.download(path)
    try:
        data = b"".join(download.stream)
    finally:
        download.stream.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getnames()


# ---- descriptors -----------------------------------------------------------------------------


def test_a_download_cut_off_at_a_directory_entry_leaves_no_descriptor_open(root: Path) -> None:
    for name in ("a", "b", "c"):
        (root / name / "sub").mkdir(parents=True)
    before = open_fds()
    for _ in range(20):
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        blocks = tar_stream(dir_fd)
        assert tarfile.TarInfo.frombuf(next(blocks), "utf-8", "strict").name == "a"
        blocks.close()  # the client is gone right after directory a's header
        os.close(dir_fd)
    assert open_fds() == before


def test_a_download_cut_off_anywhere_leaves_no_descriptor_open(
    root: Path, files: WorkspaceFiles
) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_bytes(b"x" * 3000)
    (root / "d" / "g").write_bytes(b"y")
    blocks = len(b"".join(tar_stream(os.open(root, os.O_RDONLY | os.O_DIRECTORY)))) // 512
    before = open_fds()
    for cut in range(blocks):
        download = files.download(".")
        chunks = iter(download.stream)
        for _ in range(cut):
            next(chunks, None)
        download.stream.close()
    assert open_fds() == before


# ---- what a listing and a download show ------------------------------------------------------


def test_a_users_own_file_named_like_a_staging_entry_is_listed_downloaded_and_kept(
    root: Path, files: WorkspaceFiles
) -> None:
    (root / ".hearth-upload-notes.txt").write_text("mine")
    (root / "d").mkdir()
    (root / "d" / ".hearth-upload-x").write_text("mine too")
    listed = [entry["name"] for entry in files.listing(".")["entries"]]
    assert listed == [".hearth-upload-notes.txt", "d"]
    assert tar_names(files, ".") == [".hearth-upload-notes.txt", "d", "d/.hearth-upload-x"]
    assert (root / ".hearth-upload-notes.txt").read_text() == "mine"


@pytest.mark.parametrize("how", ["listing", "download", "upload"])
def test_what_an_earlier_agent_left_is_removed_where_it_is_found(
    root: Path, files: WorkspaceFiles, how: str
) -> None:
    (root / "d").mkdir()
    (root / "d" / "kept").write_text("k")
    leave_leftovers(root / "d")
    if how == "listing":
        assert [entry["name"] for entry in files.listing("d")["entries"]] == ["kept"]
    elif how == "download":
        assert tar_names(files, "d") == ["kept"]
    else:  # an upload stages its file in this directory, the deepest that exists on its path
        data = b"new"
        files.write_file("d/new/f", RequestBody(io.BytesIO(data), length=3, max_bytes=9), mode=None)
    assert sorted(p.name for p in (root / "d").iterdir()) == (
        ["kept", "new"] if how == "upload" else ["kept"]
    )


def test_what_a_dead_agent_process_of_this_boot_left_is_removed(
    root: Path, files: WorkspaceFiles
) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    leftover = f"{PREFIX}{this_boot()}-{int(ended.stdout)}-0123456789abcdef"
    (root / leftover).write_bytes(b"half")
    assert files.listing(".")["entries"] == []
    assert list(root.iterdir()) == []


def test_a_staging_entry_of_another_running_agent_process_is_hidden_and_kept(
    root: Path, files: WorkspaceFiles
) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            in_flight = f"{PREFIX}{this_boot()}-{running.pid}-0123456789abcdef"
            (root / in_flight).write_bytes(b"arriving")
            assert files.listing(".")["entries"] == []
            assert tar_names(files, ".") == []
            assert [p.name for p in root.iterdir()] == [in_flight]
        finally:
            running.kill()


@pytest.fixture
def upload_in_flight(root: Path, files: WorkspaceFiles) -> Iterator[tuple[int, threading.Thread]]:
    """An upload of 8 bytes to ``d/f`` whose first 4 have arrived; the test sends the rest
    through the yielded pipe end, then joins the thread."""
    (root / "d").mkdir()
    read_end, write_end = os.pipe()
    results: list[object] = []

    def upload() -> None:
        with os.fdopen(read_end, "rb") as source:
            results.append(
                files.write_file("d/f", RequestBody(source, length=8, max_bytes=8), mode=None)
            )

    thread = threading.Thread(target=upload)
    thread.start()
    os.write(write_end, b"half")
    deadline = time.monotonic() + 5
    while not list((root / "d").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield write_end, thread
    finally:
        os.close(write_end)
        thread.join(5)
    assert [type(result) for result in results] == [dict]  # the upload succeeded


def test_an_upload_in_flight_is_hidden_and_never_removed(
    root: Path, files: WorkspaceFiles, upload_in_flight: tuple[int, threading.Thread]
) -> None:
    write_end, thread = upload_in_flight
    [staged] = list((root / "d").iterdir())
    assert staged.name.startswith(PREFIX)
    assert files.listing("d")["entries"] == []
    assert tar_names(files, "d") == []
    files.write_file("d/other", RequestBody(io.BytesIO(b"o"), length=1, max_bytes=1), mode=None)
    assert staged.exists()
    os.write(write_end, b"done")
    thread.join(5)
    assert (root / "d" / "f").read_bytes() == b"halfdone"
    assert sorted(p.name for p in (root / "d").iterdir()) == ["f", "other"]
