"""A directory's download through the SDK: extended tar headers (pax, GNU long names) and sparse
maps, which ``tarfile`` reads whole into memory, are bounded before it reads them. The answers
are made as ``httpx.MockTransport`` streams them, and the SDK's peak memory is measured.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from hearth.sdk import AsyncHearth, Hearth, HearthSdkError
from hearth.sdk._archive import MAX_EXTENDED_BYTES, MAX_EXTENDED_HEADERS
from tests.unit.test_sdk_download_archive import (
    CLIENTS,
    TAR_HEADERS,
    URL,
    VM,
    file,
    tar_of,
    tree,
)

BLOCK = 512
HUGE = 64 * 1024 * 1024  # what a hostile guest's header claims, and sends
PIECE = 1024 * 1024
MAX_PEAK = 16 * PIECE


class Pulled(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An answer's body made as it is read (never whole in memory)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self:
            yield piece


async def download(client: str, body: Pulled, local: Path) -> Path:
    """``files.download("proj", local)`` with the sync or the async client, over ``body``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/vms/vm-1":
            return httpx.Response(200, content=VM, headers={"content-type": "application/json"})
        return httpx.Response(200, headers=TAR_HEADERS, stream=body)

    transport = httpx.MockTransport(handle)
    if client == "sync":
        with Hearth(URL, "k", transport=transport) as sync:
            return sync.vms.get("vm-1").files.download("proj", local)
    async with AsyncHearth(URL, "k", transport=transport) as aclient:
        return await (await aclient.vms.get("vm-1")).files.download("proj", local)


def header(kind: bytes, size: int, name: str = "././@PaxHeader") -> bytes:
    """One header block of type ``kind`` announcing ``size`` bytes of data."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def pax_record(size: int) -> Iterator[bytes]:
    """One pax record (``comment``) of ``size`` bytes in all, padded to whole blocks, made in
    pieces."""
    prefix = f"{size} comment=".encode()
    yield prefix
    left = size - len(prefix) - 1
    while left > 0:
        yield b"a" * min(PIECE, left)
        left -= min(PIECE, left)
    yield b"\n" + b"\0" * (-size % BLOCK)


def huge_pax_then_a_file() -> Iterator[bytes]:
    """A pax header of HUGE bytes (valid: one comment), then a file and the archive's end."""
    yield header(tarfile.XHDTYPE, HUGE)
    yield from pax_record(HUGE)
    yield tar_of(file("f", b"data"))


def gzipped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    packer = zlib.compressobj(wbits=31)  # the gzip container
    for piece in pieces:
        yield packer.compress(piece)
    yield packer.flush()


def pax_tar(
    *members: tuple[str, dict[str, str]], global_headers: dict[str, str] | None = None
) -> bytes:
    """A pax tar of files (name, their pax headers), with global headers at its start."""
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_headers
    ) as archive:
        for name, headers in members:
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = 1, headers
            archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


async def assert_refused(client: str, body: Pulled, tmp_path: Path, reason: str) -> None:
    """The download is refused as ``reason`` says, nothing written, and the SDK never held
    much of the body in memory (the async client spools it to a file first)."""
    tracemalloc.start()
    try:
        with pytest.raises(HearthSdkError) as refused:
            await download(client, body, tmp_path / "proj")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK, peak
    assert getattr(refused.value, "code", None) == "invalid_archive"
    assert reason in str(refused.value)
    assert tree(tmp_path) == {}


@CLIENTS
@pytest.mark.parametrize("packing", ["tar", "tar.gz"])
async def test_a_huge_pax_header_is_refused_before_it_is_read(
    client: str, packing: str, tmp_path: Path
) -> None:
    # tarfile read all 64 MiB of it into memory (from ≈ 64 KiB when gzipped), then wrote "f".
    pieces = huge_pax_then_a_file()
    body = Pulled(gzipped(pieces) if packing == "tar.gz" else pieces)
    await assert_refused(client, body, tmp_path, f"more than {MAX_EXTENDED_BYTES} bytes")


@CLIENTS
async def test_a_huge_gnu_long_name_is_refused_before_it_is_read(
    client: str, tmp_path: Path
) -> None:
    def pieces() -> Iterator[bytes]:
        yield header(tarfile.GNUTYPE_LONGNAME, HUGE, "././@LongLink")
        for _ in range(HUGE // PIECE):
            yield b"n" * PIECE
        yield tar_of(file("f"))

    body = Pulled(pieces())
    await assert_refused(client, body, tmp_path, f"more than {MAX_EXTENDED_BYTES} bytes")


@CLIENTS
async def test_extended_headers_of_one_member_are_bounded_together(
    client: str, tmp_path: Path
) -> None:
    # Each under the bound, together past it: two pax headers, one after the other.
    half = MAX_EXTENDED_BYTES // 2 + BLOCK
    one = [header(tarfile.XHDTYPE, half), *pax_record(half)]
    payload = b"".join([*one, *one, tar_of(file("f"))])
    await assert_refused(client, Pulled([payload]), tmp_path, "extended headers")


@CLIENTS
async def test_global_headers_are_bounded_over_the_whole_archive(
    client: str, tmp_path: Path
) -> None:
    # One global header before each member: each under the bound, their keys all kept.
    pieces = []
    for n in range(5):
        pieces.append(header(tarfile.XGLTYPE, MAX_EXTENDED_BYTES // 4, "././@GlobalHead"))
        pieces.extend(pax_record(MAX_EXTENDED_BYTES // 4))
        pieces.append(tar_of(file(f"f{n}"))[: 2 * BLOCK])  # a plain member: header, data
    pieces.append(b"\0" * 2 * BLOCK)
    await assert_refused(client, Pulled(pieces), tmp_path, "extended headers")


@CLIENTS
async def test_a_chain_of_extended_headers_before_one_member_is_refused(
    client: str, tmp_path: Path
) -> None:
    chain = [header(tarfile.XHDTYPE, 0)] * (MAX_EXTENDED_HEADERS + 1)
    payload = b"".join([*chain, tar_of(file("f"))])
    await assert_refused(
        client, Pulled([payload]), tmp_path, f"more than {MAX_EXTENDED_HEADERS} extended headers"
    )


@CLIENTS
async def test_an_endless_gnu_sparse_map_is_refused_at_its_header(
    client: str, tmp_path: Path
) -> None:
    def pieces() -> Iterator[bytes]:
        sparse = bytearray(header(tarfile.GNUTYPE_SPARSE, 0, "s"))
        sparse[482] = 1  # "isextended": another block of map entries follows
        sparse[148:156] = b" " * 8
        sparse[148:156] = b"%06o\0 " % sum(sparse)
        yield bytes(sparse)
        entry = b"%011o\0%011o\0" % (1, 1)
        more = entry * 21 + b"\1" + b"\0" * 7
        for _ in range(HUGE // PIECE):
            yield more * (PIECE // BLOCK)

    body = Pulled(pieces())
    await assert_refused(client, body, tmp_path, "a sparse member")


@CLIENTS
async def test_long_names_and_extended_attributes_within_the_bound_download(
    client: str, tmp_path: Path
) -> None:
    name = "/".join(["d" * 200] * 4)
    xattrs = {f"SCHILY.xattr.user.a{n}": "v" * 60_000 for n in range(3)}
    payload = pax_tar((name, xattrs), ("b", {}), global_headers={"comment": "c" * 1000})
    local = await download(client, Pulled([payload]), tmp_path / "proj")
    assert tree(local) == {
        **{"/".join(["d" * 200] * k): "/" for k in (1, 2, 3)},
        name: "x",
        "b": "x",
    }
