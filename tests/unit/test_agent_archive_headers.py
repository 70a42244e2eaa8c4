"""An uploaded tar's extended headers and sparse maps, through the agent's real upload path
(``WorkspaceFiles.extract_archive``): chains of headers each under the 1 MiB cap, global
headers piling up, members kept with their pax records and sparse maps that claim endless
entries are refused (or forgotten) before ``tarfile`` holds them, with nothing written."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from hearth_agent import tar_headers
from hearth_agent.errors import InvalidArchive
from hearth_agent.files import WorkspaceFiles
from hearth_agent.log import JsonLogger
from hearth_agent.workspace import Workspace
from tests.unit.test_agent_files import MIB, body, unchanged

KIB = 1024


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "workspace").mkdir()
    return tmp_path / "workspace"


def upload(workspace: Path, archive: bytes) -> dict[str, object]:
    files = WorkspaceFiles(Workspace(workspace), logger=JsonLogger(stream=io.StringIO()))
    return files.extract_archive("dest", body(archive), max_bytes=MIB)


def header(kind: bytes, size: int, name: str = "h") -> bytes:
    """One raw 512-byte header (no checks of what it declares)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def record(key: str, value: str) -> bytes:
    """One pax record, ``"<length> key=value\\n"`` (its length counts itself)."""
    rest = f" {key}={value}\n".encode()
    length = len(rest) + 1
    while len(str(length)) + len(rest) != length:
        length += 1
    return str(length).encode() + rest


def extended(kind: bytes, data: bytes) -> bytes:
    return header(kind, len(data)) + padded(data)


def pax_of(kind: bytes, size: int, key: str = "comment") -> bytes:
    """A pax header of ``kind`` with one record of about ``size`` bytes."""
    return extended(kind, record(key, "a" * size))


def with_size(raw: bytes, field: bytes) -> bytes:
    """Header ``raw`` with its size field set to ``field`` (12 bytes) and its checksum redone."""
    block = bytearray(raw[:124] + field + raw[136:148] + b" " * 8 + raw[156:512])
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def regular(name: str, data: bytes = b"x") -> bytes:
    return header(tarfile.REGTYPE, len(data), name) + padded(data)


END = b"\0" * 1024


def test_a_chain_of_extended_headers_each_under_the_cap_is_refused_with_nothing_written(
    workspace: Path,
) -> None:
    chains = {
        "thousands-of-tiny-pax": [extended(b"x", record("k", "v"))] * 5000,
        "nine-tiny-pax": [extended(b"x", record("k", "v"))] * 9,
        "two-600-kib-pax": [pax_of(b"x", 600 * KIB)] * 2,
        "two-600-kib-long-names": [extended(tarfile.GNUTYPE_LONGNAME, b"n" * 600 * KIB)] * 2,
        "negative-size-pax": [with_size(header(b"x", 0), b"\xff" * 12)] * 2,
        "long-name-and-pax": [
            extended(tarfile.GNUTYPE_LONGNAME, b"n" * 600 * KIB),
            pax_of(b"x", 600 * KIB),
        ],
    }
    for name, chain in chains.items():
        archive = gzip.compress(b"".join(chain) + regular("f") + END)
        assert len(archive) < 64 * KIB, name
        unchanged(workspace, lambda archive=archive: upload(workspace, archive), InvalidArchive)


def test_global_pax_headers_piling_up_over_the_archive_are_refused(workspace: Path) -> None:
    # Each before its own member, under the cap alone; a global header applies to every later
    # member, so tarfile keeps them all.
    archive = b"".join(pax_of(b"g", 400 * KIB, key=f"k{n}") + regular(f"f{n}") for n in range(3))
    unchanged(workspace, lambda: upload(workspace, archive + END), InvalidArchive)


def test_extended_headers_over_the_archive_are_refused(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tar_headers, "MAX_ARCHIVE_HEADER_BYTES", 2 * MIB)
    archive = b"".join(pax_of(b"x", 900 * KIB) + regular(f"f{n}") for n in range(3))
    unchanged(workspace, lambda: upload(workspace, archive + END), InvalidArchive)


def test_sparse_members_are_refused_at_their_header(workspace: Path) -> None:
    # GNU sparse 1.0: the map, in the member's data, claims 10^12 entries.
    gnu_1_0 = (
        extended(
            b"x",
            record("GNU.sparse.major", "1")
            + record("GNU.sparse.minor", "0")
            + record("GNU.sparse.realsize", "1"),
        )
        + header(tarfile.REGTYPE, 4 * KIB, "s")
        + padded(b"1000000000000\n" + b"0\n" * 2000)
    )
    # Old GNU sparse: extension blocks, each saying another follows, to the end of the stream.
    old_gnu = bytearray(header(tarfile.GNUTYPE_SPARSE, 0, "s"))
    old_gnu[482] = 1  # isextended
    more = bytearray(512)
    more[504] = 1
    for archive in (gnu_1_0 + END, bytes(old_gnu) + bytes(more) * 100):
        unchanged(workspace, lambda archive=archive: upload(workspace, archive), InvalidArchive)
    for version in ({"GNU.sparse.map": "0,1"}, {"GNU.sparse.size": "1"}):  # 0.1 and 0.0
        info = tarfile.TarInfo("s")
        info.pax_headers = version
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as writer:
            writer.addfile(info, io.BytesIO(b""))
        with pytest.raises(InvalidArchive, match="sparse"):
            upload(workspace, raw.getvalue())


def test_members_read_are_not_kept_with_their_pax_records(workspace: Path) -> None:
    members = 40
    # Uncompressed: gzip's reads alone unpack up to 10 MiB of such headers at a time.
    archive = b"".join(pax_of(b"x", 900 * KIB) + regular(f"f{n}") for n in range(members)) + END
    tracemalloc.start()
    try:
        result = upload(workspace, archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["entries"] == members
    # Each header is read whole (900 KiB, held a few times while parsed), but no longer once
    # its member is written: 40 of them kept would be 36 MiB.
    assert peak < 12 * MIB, peak


def test_real_long_names_and_global_headers_are_still_extracted(workspace: Path) -> None:
    long_name = "d/" + "n" * 200
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as writer:
        link = tarfile.TarInfo(long_name + ".link")
        link.type, link.linkname = tarfile.SYMTYPE, "n" * 200
        writer.addfile(link)
        info = tarfile.TarInfo(long_name)
        info.size = 2
        writer.addfile(info, io.BytesIO(b"ok"))
    pax = io.BytesIO()
    with tarfile.open(
        fileobj=pax, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "c" * 100}
    ) as writer:
        info = tarfile.TarInfo("é" * 100)
        info.size = 2
        writer.addfile(info, io.BytesIO(b"ok"))
    for archive, name in ((raw.getvalue(), long_name), (pax.getvalue(), "é" * 100)):
        upload(workspace, archive)
        assert (workspace / "dest" / name).read_bytes() == b"ok"
