"""A directory's download through the SDK takes at most ``max_bytes`` of the guest's tar: as it
arrives (the async client spools it to a temporary file first) and as it unpacks (a compressed
tar counts by what it holds, a member by the size its pax records give it). A guest that streams
without end is cut off at the bound with ``InvalidArchive``, nothing left behind. The answers are
made as ``httpx.MockTransport`` streams them; the default bound is lowered to ``CAP`` for the tests.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.sdk import Hearth, InvalidArchive
from hearth.sdk._files import AsyncFiles, Files
from tests.unit.test_sdk_download_archive import CLIENTS, URL, file, serving, tar_of, tree
from tests.unit.test_sdk_download_headers import Pulled, download

PIECE = 64 * 1024
CAP = 1024 * 1024
SAFETY = 64 * 1024 * 1024  # the "endless" guest stops here, so that a failing test ends


class Taken:
    """Pieces of an answer's body, counting how much of it the SDK took."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            self.bytes += len(piece)
            yield piece


def endless_member() -> Iterator[bytes]:
    """A member that claims 4 GiB, then its data for as long as it is read (to SAFETY)."""
    info = tarfile.TarInfo("big")
    info.size = 4 * 1024**3
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    for _ in range(SAFETY // PIECE):
        yield b"\0" * PIECE


def sized_by_pax(where: str, size: int) -> bytes:
    """A tar whose member ``big`` has ``4 * CAP`` bytes of data and a header that says 0 (as
    tar writes a size the header cannot hold), ``size`` in a pax record before it (``where``
    is ``member``) or in a global pax header (``global``)."""
    info = tarfile.TarInfo("big")
    if where == "member":
        info.pax_headers = {"size": str(size)}
        head = info.tobuf(tarfile.PAX_FORMAT)
    else:
        head = tarfile.TarInfo.create_pax_global_header({"size": str(size)})
        head += info.tobuf(tarfile.PAX_FORMAT)
    return head + b"x" * (4 * CAP) + b"\0" * (2 * tarfile.BLOCKSIZE)


def pieces(data: bytes) -> Iterator[bytes]:
    yield from (data[at : at + PIECE] for at in range(0, len(data), PIECE))


def gzipped(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=31)  # the gzip container
    return packer.compress(data) + packer.flush()


def open_files() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where temporary files go during the test; the default bound lowered to CAP."""
    spools = tmp_path / "spool"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))
    for files in (Files, AsyncFiles):
        monkeypatch.setitem(files.download.__kwdefaults__, "max_bytes", CAP)
    return spools


@CLIENTS
async def test_a_guest_streaming_without_end_is_cut_off_at_the_bound(
    client: str, tmp_path: Path, spool_dir: Path
) -> None:
    # The async client spooled all of it (255 MiB of 256 sent, measured), with no bound.
    local = tmp_path / "here" / "proj"
    taken = Taken(endless_member())
    before = open_files()
    with pytest.raises(InvalidArchive) as refused:
        await download(client, Pulled(taken), local)
    assert refused.value.code == "invalid_archive"
    assert f"{local}: the download's tar is larger than max_bytes ({CAP} bytes)" in str(
        refused.value
    )
    assert taken.bytes <= CAP + PIECE + tarfile.BLOCKSIZE
    # No target, nothing beside it (the sync client made its parent before the first header).
    assert set(tree(tmp_path)) <= {"spool", "here"}
    assert open_files() <= before  # the spool is closed, and with it gone


@CLIENTS
async def test_a_compressed_tar_is_bounded_by_what_it_unpacks_to(
    client: str, tmp_path: Path, spool_dir: Path
) -> None:
    # A few KiB on the wire, 4 MiB of zeros once unpacked.
    body = Pulled([gzipped(tar_of(file("zeros", b"\0" * (4 * CAP)), file("after")))])
    with pytest.raises(InvalidArchive) as refused:
        await download(client, body, tmp_path / "proj")
    assert f"larger than max_bytes ({CAP} bytes)" in str(refused.value)
    assert tree(tmp_path) == {"spool": "/"}


# The async client counts a tar as it arrives too: only a compressed one gets to unpacking.
@pytest.mark.parametrize(
    ("client", "packed"), [("sync", False), ("sync", True), ("async", True)], ids=str
)
@pytest.mark.parametrize("where", ["member", "global"])
async def test_a_member_is_counted_by_the_size_its_pax_records_give_it(
    client: str, packed: bool, where: str, tmp_path: Path, spool_dir: Path
) -> None:
    # Counted by its header's size (0), 4 MiB were unpacked past the bound of 1 MiB (from 4 KiB
    # of gzip); with a global record, tarfile then stopped at its next header.
    payload = sized_by_pax(where, 4 * CAP)
    taken = Taken(pieces(gzipped(payload) if packed else payload))
    with pytest.raises(InvalidArchive) as refused:
        await download(client, Pulled(taken), tmp_path / "proj")
    assert refused.value.code == "invalid_archive"
    assert f"larger than max_bytes ({CAP} bytes); nothing was written" in str(refused.value)
    assert taken.bytes <= PIECE  # refused at the member's header, before its data
    assert tree(tmp_path) == {"spool": "/"}


def stepped_over() -> bytes:
    """A tar whose member is made 0 bytes by a global pax record, its header saying 4 MiB (which
    tarfile steps over to the next header)."""
    info = tarfile.TarInfo("big")
    info.size = 4 * CAP
    head = tarfile.TarInfo.create_pax_global_header({"size": "0"}) + info.tobuf()
    return head + b"x" * (4 * CAP) + b"\0" * (2 * tarfile.BLOCKSIZE)


@CLIENTS
@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (sized_by_pax("member", -4 * CAP), r"a member with a negative size \(-4194304\)"),
        (stepped_over(), rf"larger than max_bytes \({CAP} bytes\)"),
    ],
    ids=["negative-pax-size", "global-pax-size-below-the-header's"],
)
async def test_a_pax_size_cannot_take_from_the_count(
    client: str, payload: bytes, why: str, tmp_path: Path, spool_dir: Path
) -> None:
    # Counted by the larger of what is extracted (the member's size) and what tarfile steps
    # over; a negative size is refused at its header.
    with pytest.raises(InvalidArchive, match=why):
        await download(client, Pulled([gzipped(payload)]), tmp_path / "proj")
    assert tree(tmp_path) == {"spool": "/"}


@CLIENTS
async def test_a_tar_within_the_bound_downloads_whole(
    client: str, tmp_path: Path, spool_dir: Path
) -> None:
    payload = tar_of(file("a", b"x" * (CAP // 2)), file("b", b"y"))
    local = await download(client, Pulled([payload]), tmp_path / "proj")
    assert tree(local) == {"a": "x" * (CAP // 2), "b": "y"}


@pytest.mark.parametrize(("max_bytes", "whole"), [(None, True), (CAP * 4, True), (CAP, False)])
def test_max_bytes_sets_the_bound_of_one_download(
    max_bytes: int | None, whole: bool, tmp_path: Path, spool_dir: Path
) -> None:
    payload = tar_of(file("a", b"x" * (2 * CAP)))
    with Hearth(URL, "k", transport=serving(payload)) as client:
        files = client.vms.get("vm-1").files
        if whole:
            assert tree(files.download("proj", tmp_path / "p", max_bytes=max_bytes)) == {
                "a": "x" * (2 * CAP)
            }
        else:
            with pytest.raises(InvalidArchive, match=f"max_bytes \\({CAP} bytes\\)"):
                files.download("proj", tmp_path / "p", max_bytes=max_bytes)
