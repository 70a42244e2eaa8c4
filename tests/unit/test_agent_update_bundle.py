"""The update contract's pure parts: its headers, and the bundle's checks, member by member."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable

import pytest

from hearth_agent.errors import InvalidBundle
from hearth_agent.update import (
    DEADLINE_HEADER,
    DEFAULT_DEADLINE_S,
    MAX_MEMBERS,
    MAX_UNCOMPRESSED_BYTES,
    SHA256_HEADER,
    VERSION_HEADER,
    UpdateRequest,
)
from hearth_agent.update_bundle import read_bundle

SHA = "AB" * 32
GOOD_FILES = {
    "__init__.py": b'__version__ = "0.1.1"\n',
    "__main__.py": b"print('agent')\n",
    "app.py": b"x = 1\n",
}


def headers(**overrides: str | None) -> dict[str, str]:
    """Good update headers, with some replaced or (None) left out."""
    values: dict[str, str | None] = {
        "Content-Type": "application/gzip",
        VERSION_HEADER: "0.1.1",
        SHA256_HEADER: SHA,
    }
    values.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return {name: value for name, value in values.items() if value is not None}


def parse(values: dict[str, str]) -> UpdateRequest:
    """The request the headers describe (looked up case-insensitively, as the server does)."""
    lowered = {name.lower(): value for name, value in values.items()}
    return UpdateRequest.from_headers(lambda name: lowered.get(name.lower()))


def member(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    """A tar member header (its data goes beside it in ``tar_gz``)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info


def tar_bytes(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed tar of the members."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() and data is not None else None)
    return raw.getvalue()


def files_tar(files: dict[str, bytes], *extra: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A gzip'd bundle of ``hearth_agent/<name>`` files plus any extra members."""
    members = [(member(f"hearth_agent/{n}", d), d) for n, d in files.items()]
    return gzip.compress(tar_bytes([*members, *extra]))


# --- headers -----------------------------------------------------------------------------------


def test_good_headers_give_the_version_the_lower_case_digest_and_the_default_deadline() -> None:
    update = parse(headers())

    assert update == UpdateRequest(version="0.1.1", sha256=SHA.lower(), deadline_s=60)
    assert DEFAULT_DEADLINE_S == 60
    assert update.release == f"0.1.1-{SHA.lower()[:12]}"


@pytest.mark.parametrize("deadline", ["5", "600", "7.5"])
def test_a_deadline_from_5_to_600_seconds_is_taken(deadline: str) -> None:
    assert parse({**headers(), DEADLINE_HEADER: deadline}).deadline_s == float(deadline)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (VERSION_HEADER, None),
        (VERSION_HEADER, "v0.1.1"),
        (VERSION_HEADER, "0.1.1.2.3"),
        (VERSION_HEADER, "0.1.1-rc1"),
        (VERSION_HEADER, "../0.1"),
        (SHA256_HEADER, None),
        (SHA256_HEADER, "ab" * 31),
        (SHA256_HEADER, "zz" * 32),
        (DEADLINE_HEADER, "4"),
        (DEADLINE_HEADER, "601"),
        (DEADLINE_HEADER, "-10"),
        (DEADLINE_HEADER, "1e2"),
        ("Content-Type", "application/x-tar"),
        ("Content-Type", None),
    ],
)
def test_a_missing_or_malformed_header_is_an_invalid_bundle(name: str, value: str | None) -> None:
    values = {**headers(), name: value}
    with pytest.raises(InvalidBundle, match=name if name != "Content-Type" else "Content-Type"):
        parse({k: v for k, v in values.items() if v is not None})


# --- the bundle ---------------------------------------------------------------------------------


def test_a_good_bundle_gives_its_files_by_name() -> None:
    assert read_bundle(files_tar(GOOD_FILES), version="0.1.1") == GOOD_FILES


REFUSED_MEMBERS = [
    ("../x.py", b"", tarfile.REGTYPE, "not named"),
    ("hearth_agent/../x.py", b"", tarfile.REGTYPE, "not named"),
    ("/hearth_agent/x.py", b"", tarfile.REGTYPE, "not named"),
    ("./hearth_agent/x.py", b"", tarfile.REGTYPE, "not named"),
    ("hearth_agent/sub/x.py", b"", tarfile.REGTYPE, "not named"),
    ("hearth_agent/notes.txt", b"", tarfile.REGTYPE, "not named"),
    ("hearth_agent/1st.py", b"", tarfile.REGTYPE, "not named"),
    ("other/x.py", b"", tarfile.REGTYPE, "not named"),
    ("hearth_agent/app.py", b"y = 2\n", tarfile.REGTYPE, "appears twice"),
    ("hearth_agent/x.py", None, tarfile.SYMTYPE, "not a regular file"),
    ("hearth_agent/x.py", None, tarfile.LNKTYPE, "not a regular file"),
    ("hearth_agent", None, tarfile.DIRTYPE, "not a regular file"),
    ("hearth_agent/x.py", None, tarfile.CHRTYPE, "not a regular file"),
    ("hearth_agent/x.py", None, tarfile.FIFOTYPE, "not a regular file"),
    ("hearth_agent/bad.py", b"def (:\n", tarfile.REGTYPE, "not valid Python"),
    ("hearth_agent/nul.py", b"x = 1\0\n", tarfile.REGTYPE, "not valid Python"),
]


@pytest.mark.parametrize(
    ("name", "data", "kind", "message"),
    REFUSED_MEMBERS,
    ids=[f"{name}:{kind.decode()}:{message}" for name, _, kind, message in REFUSED_MEMBERS],
)
def test_a_refused_member_makes_the_bundle_invalid(
    name: str, data: bytes | None, kind: bytes, message: str
) -> None:
    info = member(name, data, kind)
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    with pytest.raises(InvalidBundle, match=message):
        read_bundle(files_tar(GOOD_FILES, (info, data)), version="0.1.1")


@pytest.mark.parametrize("required", ["__init__.py", "__main__.py"])
def test_a_bundle_without_init_or_main_is_invalid(required: str) -> None:
    files = {name: data for name, data in GOOD_FILES.items() if name != required}
    with pytest.raises(InvalidBundle, match=f"hearth_agent/{required}"):
        read_bundle(files_tar(files), version="0.1.1")


def test_a_bundle_declaring_another_version_than_its_header_is_invalid() -> None:
    with pytest.raises(InvalidBundle, match=r"declares __version__ '0\.1\.1'"):
        read_bundle(files_tar(GOOD_FILES), version="0.1.2")
    without = {**GOOD_FILES, "__init__.py": b"VERSION = '0.1.1'\n"}
    with pytest.raises(InvalidBundle, match="declares __version__ None"):
        read_bundle(files_tar(without), version="0.1.1")


def test_more_than_the_member_cap_is_invalid() -> None:
    extra = [(member(f"hearth_agent/m{i}.py"), b"") for i in range(MAX_MEMBERS)]
    with pytest.raises(InvalidBundle, match=f"more than {MAX_MEMBERS} members"):
        read_bundle(files_tar(GOOD_FILES, *extra), version="0.1.1")


def test_a_bundle_inflating_past_the_cap_is_refused_without_inflating_it_all() -> None:
    bomb = b"\0" * (MAX_UNCOMPRESSED_BYTES * 4)
    body = files_tar(GOOD_FILES, (member("hearth_agent/big.py", bomb), bomb))
    assert len(body) < MAX_UNCOMPRESSED_BYTES // 64

    with pytest.raises(InvalidBundle, match="inflates to more than"):
        read_bundle(body, version="0.1.1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "truncated"),
        (b"not gzip at all", "not a gzip stream"),
        (files_tar(GOOD_FILES)[:-20], "truncated"),
        (files_tar(GOOD_FILES) + b"trailing", "after the end of its gzip stream"),
        (gzip.compress(b"not a tar" * 100), "not a readable tar"),
        (gzip.compress(tar_bytes([])), "no hearth_agent/__init__.py"),
    ],
    ids=["empty", "not_gzip", "cut_short", "trailing_data", "not_tar", "empty_tar"],
)
def test_a_body_that_is_not_a_whole_gzip_tar_is_invalid(body: bytes, message: str) -> None:
    with pytest.raises(InvalidBundle, match=message):
        read_bundle(body, version="0.1.1")
