"""A single file's download through the SDK (to a path, to bytes, streamed) and ``hearth files
get`` take at most ``max_bytes`` of it, as a directory's do: counted as it arrives, so a guest
that streams without end, or sends more than its Content-Length says, is cut off at the bound
with ``InvalidArchive``; a Content-Length past the bound is refused before the body is read. A
file saved to a path is put in place only when whole: nothing partial is left, and a file
already there stays as it was. The answers are made as ``httpx.MockTransport`` streams them, or
served on loopback for the CLI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hearth.sdk import AsyncFiles, AsyncHearth, Files, Hearth, InvalidArchive
from tests.conftest import hearth_cli
from tests.loopback_api import LOOPBACK, QuietHandler, listening
from tests.unit.test_sdk_download_archive import CLIENTS, URL, VM, tree
from tests.unit.test_sdk_download_cap import Taken
from tests.unit.test_sdk_download_headers import Pulled

PIECE = 64 * 1024
CAP = 1024 * 1024
SAFETY = 64 * 1024 * 1024  # the "endless" guest stops here, so that a failing test ends
FILE_HEADERS = {"content-type": "application/octet-stream", "x-hearth-file-type": "file"}
FORMS = pytest.mark.parametrize("form", ["path", "bytes", "stream"])


def endless() -> Iterator[bytes]:
    """A file's body for as long as it is read (to SAFETY)."""
    for _ in range(SAFETY // PIECE):
        yield b"x" * PIECE


def pieces(size: int) -> Iterator[bytes]:
    """``size`` bytes of ``x``, in pieces."""
    for at in range(0, size, PIECE):
        yield b"x" * min(PIECE, size - at)


def serving_file(body: Taken, length: int | None = None) -> httpx.MockTransport:
    """The API of one VM whose file ``big.bin`` comes down as ``body`` (declaring ``length``,
    if given, as its Content-Length)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/vms/vm-1":
            return httpx.Response(200, content=VM, headers={"content-type": "application/json"})
        assert request.url.params["path"] == "big.bin"
        headers = dict(FILE_HEADERS)
        if length is not None:
            headers["content-length"] = str(length)
        return httpx.Response(200, headers=headers, stream=Pulled(body))

    return httpx.MockTransport(handle)


async def fetched(
    files: Files | AsyncFiles, form: str, local: Path, max_bytes: int | None
) -> bytes:
    """``big.bin`` through either client's ``files``: downloaded to ``local`` (its content read
    back), read whole, or streamed."""
    if isinstance(files, Files):
        if form == "path":
            return files.download("big.bin", local, max_bytes=max_bytes).read_bytes()
        if form == "bytes":
            return files.read("big.bin", max_bytes=max_bytes)
        with files.read_stream("big.bin", max_bytes=max_bytes) as stream:
            return b"".join(stream)
    if form == "path":
        return (await files.download("big.bin", local, max_bytes=max_bytes)).read_bytes()
    if form == "bytes":
        return await files.read("big.bin", max_bytes=max_bytes)
    async with files.read_stream("big.bin", max_bytes=max_bytes) as astream:
        return b"".join([chunk async for chunk in astream])


async def fetch(
    client: str, form: str, transport: httpx.MockTransport, local: Path, max_bytes: int | None
) -> bytes:
    """``fetched`` with the sync or the async client, over ``transport``."""
    if client == "sync":
        with Hearth(URL, "k", transport=transport) as sync:
            return await fetched(sync.vms.get("vm-1").files, form, local, max_bytes)
    async with AsyncHearth(URL, "k", transport=transport) as aclient:
        return await fetched((await aclient.vms.get("vm-1")).files, form, local, max_bytes)


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """Where downloads go: a directory holding ``big.bin`` already, which a refused download
    must leave as it was."""
    (tmp_path / "big.bin").write_bytes(b"mine")
    return tmp_path


async def assert_refused(
    client: str, form: str, transport: httpx.MockTransport, here: Path
) -> None:
    """The download is refused at the bound CAP, saying how to raise it; nothing partial is
    left in ``here``, and the file there is as it was."""
    with pytest.raises(InvalidArchive) as refused:
        await fetch(client, form, transport, here, CAP)
    assert refused.value.code == "invalid_archive"
    text = str(refused.value)
    assert f"is larger than max_bytes ({CAP} bytes); nothing was written" in text
    assert "a larger max_bytes, or hearth files get --max-bytes N, raises the bound" in text
    assert tree(here) == {"big.bin": "mine"}


@CLIENTS
@FORMS
@pytest.mark.parametrize(
    ("length", "most"),
    [(None, CAP + PIECE), (10, CAP + PIECE), (CAP + 1, 0)],
    ids=["no-length", "length-within-the-bound", "length-past-the-bound"],
)
async def test_a_guest_streaming_a_file_without_end_is_cut_off_at_the_bound(
    client: str, form: str, length: int | None, most: int, here: Path
) -> None:
    # Before: the sync and async clients took all 64 MiB (to disk, or to memory for bytes).
    # A Content-Length within the bound is not trusted (httpx does not hold a mock to it); one
    # past it refuses the file before its body is read.
    taken = Taken(endless())
    await assert_refused(client, form, serving_file(taken, length), here)
    assert taken.bytes <= most


@CLIENTS
@FORMS
@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_a_file_of_exactly_max_bytes_passes_and_one_byte_more_fails(
    client: str, form: str, declared: bool, here: Path
) -> None:
    def serving_size(size: int) -> httpx.MockTransport:
        return serving_file(Taken(pieces(size)), size if declared else None)

    assert await fetch(client, form, serving_size(CAP), here, CAP) == b"x" * CAP
    (here / "big.bin").write_bytes(b"mine")
    await assert_refused(client, form, serving_size(CAP + 1), here)


@CLIENTS
async def test_a_refused_download_names_where_it_would_have_gone(client: str, here: Path) -> None:
    # Into the directory ``here``: the file under its own name, refused, nothing left there.
    with pytest.raises(InvalidArchive) as refused:
        await fetch(client, "path", serving_file(Taken(pieces(CAP + 1))), here, CAP)
    assert str(refused.value).startswith(f"{here / 'big.bin'}: the file is larger than max_bytes")
    assert sorted(os.listdir(here)) == ["big.bin"]
    assert (here / "big.bin").read_bytes() == b"mine"


@CLIENTS
@FORMS
async def test_max_bytes_none_takes_the_whole_file(client: str, form: str, here: Path) -> None:
    size = 3 * CAP
    got = await fetch(client, form, serving_file(Taken(pieces(size))), here / "new.bin", None)
    assert got == b"x" * size


# --- hearth files get ------------------------------------------------------------------------


@pytest.fixture
def endless_api() -> Iterator[Callable[[], str]]:
    """Serves on loopback, as the API does for VM ``vm-1``, a file ``big.bin`` with no length
    declared that never ends (to SAFETY, or until the client goes away); the server's URL."""
    with contextlib.ExitStack() as servers:

        def serve() -> str:
            class Handler(QuietHandler):
                def do_GET(self) -> None:
                    if not self.path.startswith("/api/vms/vm-1/files"):
                        self.answer(200, VM, {"content-type": "application/json"})
                        return
                    self.send_response(200)
                    for name, value in FILE_HEADERS.items():
                        self.send_header(name, value)
                    self.end_headers()  # HTTP/1.0: the body ends when the connection does
                    try:
                        for piece in endless():
                            self.wfile.write(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

            return servers.enter_context(listening(ThreadingHTTPServer(LOOPBACK, Handler)))

        yield serve


@pytest.mark.parametrize("local", ["file", "stdout"])
def test_hearth_files_get_bounds_a_file_by_max_bytes(
    endless_api: Callable[[], str], local: str, tmp_path: Path
) -> None:
    mine = tmp_path / "big.bin"
    mine.write_bytes(b"mine")
    env = {"HEARTH_URL": endless_api(), "HEARTH_API_KEY": "k"}
    where = str(mine) if local == "file" else "-"

    got = hearth_cli(
        "files", "get", "vm-1", "big.bin", where, "--max-bytes", str(CAP), env=env, timeout=60
    )

    assert got.returncode == 1
    assert "invalid_archive" in got.stderr
    assert f"larger than max_bytes ({CAP} bytes)" in got.stderr
    assert len(got.stdout) <= CAP  # to stdout: what came before the bound, no more
    assert tree(tmp_path) == {"big.bin": "mine"}


def test_hearth_files_get_says_max_bytes_bounds_a_file_too() -> None:
    shown = hearth_cli("files", "get", "--help", env={"COLUMNS": "200"}, timeout=60)
    assert "The most a file, or a directory's tar, may bring" in shown.stdout
