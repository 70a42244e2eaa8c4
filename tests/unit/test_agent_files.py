"""The agent's files API below HTTP: paths confined to the workspace, atomic writes, tar checks.

Every refusal is checked to leave the disk exactly as it was: the workspace and the directory
outside it are snapshotted before and compared after.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth_agent.archive import tar_stream
from hearth_agent.bodies import RequestBody
from hearth_agent.errors import (
    BadRequest,
    FileTooLarge,
    InvalidArchive,
    InvalidInput,
    PathConflict,
    PathNotFound,
    PathOutsideWorkspace,
)
from hearth_agent.files import WorkspaceFiles
from hearth_agent.log import JsonLogger
from hearth_agent.staging import STAGING_PREFIX
from hearth_agent.workspace import Workspace

MIB = 1024 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The workspace, with a sibling directory ``outside`` holding a file nobody may touch."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep\n")
    return workspace


@pytest.fixture
def files(root: Path) -> WorkspaceFiles:
    return WorkspaceFiles(Workspace(root), logger=JsonLogger(stream=io.StringIO()))


def body(data: bytes, *, chunked: bool = False, max_bytes: int = 64 * MIB) -> RequestBody:
    """A request body over ``data`` as the server would read it off the socket."""
    if not chunked:
        return RequestBody(io.BytesIO(data), length=len(data), max_bytes=max_bytes)
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + 1000]), data[i : i + 1000])
        for i in range(0, len(data), 1000)
    )
    return RequestBody(io.BytesIO(framed + b"0\r\n\r\n"), length=None, max_bytes=max_bytes)


def snapshot(top: Path) -> dict[str, tuple[str, object]]:
    """Everything under ``top``: each path's kind and content (or link target, or mode)."""
    found: dict[str, tuple[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = ("symlink", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", stat.S_IMODE(path.stat().st_mode))
            else:
                found[rel] = ("file", path.read_bytes())
    return found


def unchanged(root: Path, action: Callable[[], object], error: type[Exception]) -> None:
    """``action`` raises ``error`` and leaves the workspace and what is beside it untouched."""
    before = snapshot(root.parent)
    with pytest.raises(error):
        action()
    assert snapshot(root.parent) == before


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], compress: bool = False) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue()) if compress else raw.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.mtime = 1_700_000_000
    return info


def pax(info: tarfile.TarInfo, **headers: str) -> tarfile.TarInfo:
    """``info`` with pax ``headers`` written as they are (read back, they override its own)."""
    info.pax_headers = headers
    return info


# ---- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "a/..", "/etc/passwd", "/"])
def test_a_path_with_dotdot_or_absolute_outside_is_refused(root: Path, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace):
        Workspace(root).components(path)


def test_paths_are_relative_and_an_absolute_path_inside_the_workspace_is_accepted(
    root: Path,
) -> None:
    workspace = Workspace(root)
    assert workspace.components("") == ()
    assert workspace.components("./a//b/./c/") == ("a", "b", "c")
    assert workspace.components(f"{root}/a/b") == ("a", "b")
    assert workspace.components(str(root)) == ()
    with pytest.raises(InvalidInput):
        workspace.components("a\0b")


def test_a_symlink_inside_the_workspace_is_followed(root: Path, files: WorkspaceFiles) -> None:
    (root / "real").mkdir()
    (root / "real" / "f").write_text("data")
    (root / "link").symlink_to("real")
    (root / "abs").symlink_to(root / "real")
    (root / "up").mkdir()
    (root / "up" / "back").symlink_to("../real/f")
    for path in ("link/f", "abs/f", "up/back"):
        download = files.download(path)
        assert b"".join(download.stream) == b"data"
        download.stream.close()


@pytest.mark.parametrize("target", ["/etc", "../outside", "../../", "sub/../..", "x/../y"])
def test_a_symlink_leading_out_is_never_followed(
    root: Path, files: WorkspaceFiles, target: str
) -> None:
    (root / "sub").mkdir()
    (root / "out").symlink_to(target)
    for action in (
        lambda: files.download("out/secret"),
        lambda: files.listing("out"),
        lambda: files.write_file("out/secret", body(b"x"), mode=None),
        lambda: files.write_file("out", body(b"x"), mode=None),
    ):
        unchanged(root, action, PathOutsideWorkspace)


def test_a_symlink_loop_is_refused(root: Path, files: WorkspaceFiles) -> None:
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(PathOutsideWorkspace, match="too many"):
        files.listing("a")


def test_a_missing_path_is_not_found(files: WorkspaceFiles) -> None:
    with pytest.raises(PathNotFound):
        files.download("nothing/here")
    with pytest.raises(PathNotFound):
        files.remove("nothing", recursive=False)


# ---- writing one file ----------------------------------------------------------------------


def test_a_file_is_written_whole_with_its_sha256_and_missing_parents_made(
    root: Path, files: WorkspaceFiles
) -> None:
    data = os.urandom(3 * MIB + 17)
    written = files.write_file("deep/er/f.bin", body(data, chunked=True), mode=None)
    assert written == {
        "path": "deep/er/f.bin",
        "type": "file",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mode": "0644",
    }
    assert (root / "deep" / "er" / "f.bin").read_bytes() == data
    assert stat.S_IMODE((root / "deep" / "er" / "f.bin").stat().st_mode) == 0o644
    assert not [p for p in root.rglob("*") if p.name.startswith(STAGING_PREFIX)]


def test_an_overwrite_keeps_the_files_mode_unless_told_and_replaces_it_atomically(
    root: Path, files: WorkspaceFiles
) -> None:
    target = root / "run.sh"
    target.write_text("old")
    target.chmod(0o750)
    old_inode = target.stat().st_ino
    files.write_file("run.sh", body(b"new"), mode=None)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert target.stat().st_ino != old_inode  # renamed into place, never written in place
    files.write_file("run.sh", body(b"newer"), mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_writing_through_a_symlink_inside_writes_its_target(
    root: Path, files: WorkspaceFiles
) -> None:
    (root / "target.txt").write_text("old")
    (root / "link.txt").symlink_to("target.txt")
    files.write_file("link.txt", body(b"new"), mode=None)
    assert (root / "target.txt").read_text() == "new"
    assert (root / "link.txt").is_symlink()


@pytest.mark.parametrize(
    ("make_body", "error"),
    [
        (lambda data: body(data, max_bytes=1000), FileTooLarge),
        (lambda data: body(data, chunked=True, max_bytes=1000), FileTooLarge),
        (lambda data: RequestBody(io.BytesIO(data[:500]), length=2000, max_bytes=MIB), BadRequest),
        (
            lambda data: RequestBody(
                io.BytesIO(b"7d0\r\n" + data[:500]), length=None, max_bytes=MIB
            ),
            BadRequest,
        ),
    ],
    ids=["over-cap", "over-cap-chunked", "short", "chunked-without-end"],
)
def test_an_upload_over_its_cap_or_cut_off_leaves_nothing(
    root: Path,
    files: WorkspaceFiles,
    make_body: Callable[[bytes], RequestBody],
    error: type[Exception],
) -> None:
    (root / "kept.txt").write_text("before")
    data = os.urandom(2000)
    unchanged(root, lambda: files.write_file("new/dir/f", make_body(data), mode=None), error)
    unchanged(root, lambda: files.write_file("kept.txt", make_body(data), mode=None), error)


def test_a_file_cannot_replace_a_directory(root: Path, files: WorkspaceFiles) -> None:
    (root / "d").mkdir()
    unchanged(root, lambda: files.write_file("d", body(b"x"), mode=None), PathConflict)
    unchanged(root, lambda: files.write_file("", body(b"x"), mode=None), PathConflict)


# ---- archives ------------------------------------------------------------------------------


def test_a_tar_is_extracted_with_modes_links_and_mtimes(root: Path, files: WorkspaceFiles) -> None:
    archive = tar_of(
        (member("./", tarfile.DIRTYPE, mode=0o755), None),
        (member("bin", tarfile.DIRTYPE, mode=0o750), None),
        (member("bin/run", mode=0o755), b"#!/bin/sh\n"),
        (member("docs/readme"), b"hello"),
        (member("docs/same", tarfile.LNKTYPE, link="docs/readme"), None),
        (member("latest", tarfile.SYMTYPE, link="docs/readme"), None),
        compress=True,
    )
    answer = files.extract_archive("proj", body(archive), max_bytes=MIB)
    assert answer == {"path": "proj", "type": "dir", "size": 15, "entries": 6}
    proj = root / "proj"
    assert (proj / "bin" / "run").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((proj / "bin" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((proj / "bin").stat().st_mode) == 0o750
    assert (proj / "docs" / "same").stat().st_ino == (proj / "docs" / "readme").stat().st_ino
    assert os.readlink(proj / "latest") == "docs/readme"
    assert (proj / "docs" / "readme").stat().st_mtime == 1_700_000_000
    assert not [p for p in root.rglob("*") if p.name.startswith(STAGING_PREFIX)]


def test_a_tar_is_merged_into_an_existing_directory(root: Path, files: WorkspaceFiles) -> None:
    (root / "proj" / "src").mkdir(parents=True)
    (root / "proj" / "src" / "kept.py").write_text("kept")
    (root / "proj" / "old.txt").write_text("old")
    archive = tar_of((member("src/new.py"), b"new"), (member("old.txt"), b"replaced"))
    files.extract_archive("proj", body(archive), max_bytes=MIB)
    assert (root / "proj" / "src" / "kept.py").read_text() == "kept"
    assert (root / "proj" / "src" / "new.py").read_text() == "new"
    assert (root / "proj" / "old.txt").read_text() == "replaced"
    # The workspace itself is a directory like any other.
    answer = files.extract_archive("", body(tar_of((member("top.txt"), b"top"))), max_bytes=MIB)
    assert answer["path"] == "."
    assert (root / "top.txt").read_text() == "top"
    assert sorted(p.name for p in root.iterdir()) == ["proj", "top.txt"]


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ([(member("ok"), b"1"), (member("../escape"), b"x")], PathOutsideWorkspace),
        ([(member("ok"), b"1"), (member("a/../../escape"), b"x")], PathOutsideWorkspace),
        ([(member("/tmp/escape"), b"x")], PathOutsideWorkspace),
        ([(member("out", tarfile.SYMTYPE, link="/etc"), None)], PathOutsideWorkspace),
        ([(member("out", tarfile.SYMTYPE, link="../../outside"), None)], PathOutsideWorkspace),
        (
            [
                (member("out", tarfile.SYMTYPE, link="../../outside"), None),
                (member("out/secret"), b"overwritten"),
            ],
            PathOutsideWorkspace,
        ),
        (
            [(member("in", tarfile.SYMTYPE, link="."), None), (member("in/f"), b"through")],
            InvalidArchive,
        ),
        ([(member("hard", tarfile.LNKTYPE, link="../outside/secret"), None)], PathOutsideWorkspace),
        ([(member("hard", tarfile.LNKTYPE, link="/etc/passwd"), None)], PathOutsideWorkspace),
        ([(member("hard", tarfile.LNKTYPE, link="kept.txt"), None)], PathOutsideWorkspace),
        ([(member("ok"), b"1"), (member("dev", tarfile.CHRTYPE), None)], InvalidArchive),
        ([(member("fifo", tarfile.FIFOTYPE), None)], InvalidArchive),
        ([(member("a"), b"y" * 600), (member("b"), b"x" * 600)], FileTooLarge),
        ([(member("d", tarfile.DIRTYPE), None), (member("d"), b"file over dir")], InvalidArchive),
        ([(member("f"), b"file"), (member("f/under"), b"x")], InvalidArchive),
        ([(pax(member("t"), mtime="1e400"), b"x")], InvalidArchive),
        ([(pax(member("l", tarfile.SYMTYPE), linkpath="a\0b"), None)], InvalidArchive),
        ([(member("n" * 2 * MIB), b"x")], InvalidArchive),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "absolute",
        "symlink-absolute-out",
        "symlink-relative-out",
        "symlink-out-then-file-through-it",
        "file-through-a-symlink-of-the-archive",
        "hardlink-dotdot",
        "hardlink-absolute",
        "hardlink-to-a-workspace-file",
        "device",
        "fifo",
        "over-cap",
        "file-over-directory",
        "file-under-a-file",
        "mtime-out-of-range",
        "link-with-a-nul",
        "header-over-1-mib",
    ],
)
def test_a_bad_tar_is_refused_with_nothing_written(
    root: Path,
    files: WorkspaceFiles,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    error: type[Exception],
) -> None:
    (root / "kept.txt").write_text("kept")
    archive = tar_of(*members)
    for path in ("new", "", "kept-dir"):
        unchanged(
            root, lambda p=path: files.extract_archive(p, body(archive), max_bytes=1000), error
        )


def test_a_tar_that_would_replace_a_directory_by_a_file_moves_nothing(
    root: Path, files: WorkspaceFiles
) -> None:
    (root / "proj" / "x").mkdir(parents=True)
    archive = tar_of((member("a.txt"), b"a"), (member("x"), b"not a dir"))
    unchanged(
        root, lambda: files.extract_archive("proj", body(archive), max_bytes=MIB), PathConflict
    )


def test_a_body_that_is_no_tar_or_into_a_file_is_refused(root: Path, files: WorkspaceFiles) -> None:
    (root / "file").write_text("x")
    unchanged(
        root,
        lambda: files.extract_archive("new", body(b"not a tar" * 100), max_bytes=MIB),
        InvalidArchive,
    )
    archive = tar_of((member("a"), b"a"))
    unchanged(
        root, lambda: files.extract_archive("file", body(archive), max_bytes=MIB), PathConflict
    )


def test_a_directory_goes_out_as_a_tar_that_extracts_to_the_same_tree(
    root: Path, files: WorkspaceFiles, tmp_path: Path
) -> None:
    tree = root / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "big").write_bytes(os.urandom(2 * MIB + 3))
    (tree / "top.txt").write_text("top")
    (tree / "run").write_text("#!/bin/sh")
    (tree / "run").chmod(0o755)
    (tree / "link").symlink_to("a/b/big")
    (tree / "empty").mkdir()
    download = files.download("tree")
    assert download.kind == "dir"
    data = b"".join(download.stream)
    download.stream.close()
    files.extract_archive("copy", body(data), max_bytes=64 * MIB)
    assert snapshot(root / "copy") == snapshot(tree)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert sorted(archive.getnames()) == [
            "a",
            "a/b",
            "a/b/big",
            "empty",
            "link",
            "run",
            "top.txt",
        ]


def test_tar_stream_leaves_the_callers_descriptor_open(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert b"".join(tar_stream(fd)).endswith(b"\0" * 1024)
        os.fstat(fd)
    finally:
        os.close(fd)


# ---- listing and removal -------------------------------------------------------------------


def test_a_listing_names_each_entry_with_its_type_size_mode_and_mtime(
    root: Path, files: WorkspaceFiles
) -> None:
    (root / "d").mkdir()
    (root / "f").write_bytes(b"12345")
    (root / "f").chmod(0o600)
    (root / "l").symlink_to("f")
    listing = files.listing("")
    assert listing["path"] == "."
    entries = {entry["name"]: entry for entry in listing["entries"]}  # type: ignore[attr-defined]
    assert entries["f"]["type"] == "file"
    assert entries["f"]["size"] == 5
    assert entries["f"]["mode"] == "0600"
    assert entries["d"]["type"] == "dir"
    assert entries["l"] == {**entries["l"], "type": "symlink", "target": "f"}
    assert isinstance(entries["f"]["mtime"], float)


def test_removal_takes_a_file_a_symlink_itself_and_a_directory_only_when_recursive(
    root: Path, files: WorkspaceFiles
) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_text("x")
    (root / "target").write_text("kept")
    (root / "l").symlink_to("target")
    assert files.remove("l", recursive=False)["type"] == "symlink"
    assert (root / "target").read_text() == "kept"
    unchanged(root, lambda: files.remove("d", recursive=False), PathConflict)
    unchanged(root, lambda: files.remove("", recursive=True), InvalidInput)
    files.remove("d", recursive=True)
    assert not (root / "d").exists()


# ---- bodies --------------------------------------------------------------------------------


def test_a_chunked_body_with_extensions_and_trailers_is_read_whole() -> None:
    framed = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
    stream = RequestBody(io.BytesIO(framed), length=None, max_bytes=100)
    assert stream.read(3) == b"hel"
    assert stream.read(100) == b"lo world"
    assert stream.read(10) == b""
    assert stream.complete


@pytest.mark.parametrize("framed", [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n"])
def test_a_malformed_chunked_body_is_a_bad_request(framed: bytes) -> None:
    with pytest.raises(BadRequest):
        RequestBody(io.BytesIO(framed), length=None, max_bytes=100).drain()


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    with pytest.raises(FileTooLarge):
        RequestBody(io.BytesIO(b""), length=101, max_bytes=100)


def test_a_small_compressed_tar_whose_files_pass_the_cap_is_refused(
    root: Path, files: WorkspaceFiles
) -> None:
    archive = tar_of((member("zeros"), b"\0" * (4 * MIB)), compress=True)
    assert len(archive) < MIB
    unchanged(
        root,
        lambda: files.extract_archive("z", body(archive, max_bytes=MIB), max_bytes=MIB),
        FileTooLarge,
    )
