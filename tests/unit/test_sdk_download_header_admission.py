"""A directory's download through the SDK, admitted header by header: a header with a negative
size is refused before it can take from the download's cap, and the members read are not kept
with their pax records."""

from __future__ import annotations

import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from tests.unit.test_sdk_download_archive import CLIENTS, file, tar_of, tree
from tests.unit.test_sdk_download_headers import (
    BLOCK,
    PIECE,
    Pulled,
    assert_refused,
    download,
    header,
    pax_record,
)


def with_size(raw: bytes, field: bytes) -> bytes:
    """Header ``raw`` with its size field set to ``field`` (12 bytes) and its checksum redone."""
    block = bytearray(raw[:124] + field + raw[136:148] + b" " * 8 + raw[156:BLOCK])
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@CLIENTS
async def test_a_header_with_a_negative_size_is_refused(client: str, tmp_path: Path) -> None:
    # A base-256 size of -1: counted by the download's cap, it would take from what it counted.
    negative = with_size(header(tarfile.XHDTYPE, 0), b"\xff" * 12)
    body = Pulled([negative, tar_of(file("f"))])
    await assert_refused(client, body, tmp_path, "a header with a negative size")


@CLIENTS
async def test_members_read_are_not_kept_with_their_pax_records(
    client: str, tmp_path: Path
) -> None:
    members, size = 40, 200 * 1024  # each header under the SDK's bound (256 KiB)

    def pieces() -> Iterator[bytes]:
        for n in range(members):
            yield header(tarfile.XHDTYPE, size)
            yield from pax_record(size)
            yield tar_of(file(f"f{n}"))[: 2 * BLOCK]  # a plain member: header, data
        yield b"\0" * 2 * BLOCK

    tracemalloc.start()
    try:
        local = await download(client, Pulled(pieces()), tmp_path / "proj")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tree(local) == {f"f{n}": "x" for n in range(members)}
    # Each header is read whole (held a few times while parsed), but no longer once its member
    # is written: 40 of them kept would be 8 MiB.
    assert peak < 4 * PIECE, peak
