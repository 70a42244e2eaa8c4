"""``vm.files`` of the SDK (sync over real HTTP, async in process) and ``hearth files``, against
the API over VMs whose agents are real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.sdk import (
    AsyncHearth,
    FileWritten,
    Hearth,
    HearthApiError,
    LocalFileChanged,
)
from tests.agent_backend import AgentBackend
from tests.conftest import HEARTH, hearth_cli
from tests.integration.api_fixtures import BASE_URL, Api
from tests.integration.sdk_fixtures import *  # noqa: F403
from tests.integration.sdk_fixtures import Live

MIB = 1024 * 1024


@pytest.fixture
def ann(live: Live) -> Iterator[Hearth]:
    """ann's sync client, straight to the served API."""
    with Hearth(live.url, live.keys["ann"]) as client:
        yield client


@pytest.fixture
def ann_env(live: Live) -> dict[str, str]:
    """What ``hearth`` needs to act as ann against the served API."""
    return {"HEARTH_URL": live.url, "HEARTH_API_KEY": live.keys["ann"]}


def local_tree(root: Path) -> Path:
    """A small tree with a big file, an executable, an empty directory and a symlink."""
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "data.bin").write_bytes(os.urandom(3 * MIB))
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "latest").symlink_to("src/pkg/mod.py")
    return root


def contents(root: Path) -> dict[str, tuple[str, object]]:
    """Each path under ``root`` (relative): its kind and content, link target or mode."""
    found: dict[str, tuple[str, object]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", None)
        else:
            found[rel] = ("file", (path.read_bytes(), path.stat().st_mode & 0o777))
    return found


def workspace(live: Live, vm_id: str) -> Path:
    backend = live.api.backend
    assert isinstance(backend, AgentBackend)
    return backend.launcher.root / vm_id / "home" / "workspace"


def test_sync_files_write_read_list_download_and_remove(
    ann: Hearth, live: Live, tmp_path: Path
) -> None:
    vm = ann.vms.create("cli")
    files = vm.files
    data = os.urandom(2 * MIB + 1)
    assert files.write("a/b.bin", data) == FileWritten(
        path="a/b.bin",
        type="file",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mode=0o644,
    )
    assert files.read("a/b.bin") == data
    with files.read_stream("a/b.bin") as stream:
        assert (stream.kind, stream.size) == ("file", len(data))
        assert b"".join(stream) == data
    # Chunks and file objects are streamed; a local file keeps its mode.
    files.write("chunks.txt", iter([b"one ", b"two"]))
    assert files.read("chunks.txt") == b"one two"
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    assert files.write("bin/tool.sh", script).mode == 0o750
    with script.open("rb") as handle:
        assert files.write("bin/copy.sh", handle, mode=0o700).mode == 0o700

    # A directory goes up as a tar and comes back down the same.
    tree = local_tree(tmp_path / "tree")
    seen: list[int] = []
    written = files.write("proj", tree, progress=seen.append)
    assert (written.type, written.entries) == ("dir", 7)
    assert seen[-1] > 3 * MIB
    assert contents(workspace(live, vm.id) / "proj") == contents(tree)
    back = files.download("proj", tmp_path / "back")
    assert contents(back) == contents(tree)
    into = tmp_path / "into"
    into.mkdir()
    assert files.download("a/b.bin", into) == into / "b.bin"
    assert (into / "b.bin").read_bytes() == data

    listed = {entry.name: entry for entry in files.list("proj")}
    assert sorted(listed) == ["data.bin", "empty", "latest", "run.sh", "src"]
    assert (listed["run.sh"].type, listed["run.sh"].mode) == ("file", 0o755)
    assert (listed["latest"].type, listed["latest"].target) == ("symlink", "src/pkg/mod.py")

    with pytest.raises(HearthApiError) as refused:
        files.remove("proj")
    assert (refused.value.status, refused.value.code) == (409, "path_conflict")
    files.remove("proj", recursive=True)
    for call in (lambda: files.read("proj"), lambda: files.list("proj")):
        with pytest.raises(HearthApiError) as missing:
            call()
        assert (missing.value.status, missing.value.code) == (404, "path_not_found")
    with pytest.raises(HearthApiError) as outside:
        files.write("../escape", b"x")
    assert (outside.value.status, outside.value.code) == (422, "path_outside_workspace")
    with pytest.raises(TypeError):
        files.write("text", "not bytes")  # type: ignore[arg-type]


async def test_async_files_in_process(inproc: Api, tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=inproc.app)
    key = await inproc.user_key("ann")
    async with AsyncHearth(BASE_URL, key, transport=transport) as client:
        vm = await client.vms.create("cli")
        files = vm.files
        tree = local_tree(tmp_path / "tree")
        assert (await files.write("proj", tree)).type == "dir"
        assert (await files.write("one.txt", b"one")).size == 3
        assert await files.read("one.txt") == b"one"
        async with files.read_stream("proj/run.sh") as stream:
            assert stream.kind == "file"
            assert b"".join([chunk async for chunk in stream]) == b"#!/bin/sh\necho run\n"
        back = await files.download("proj", tmp_path / "back")
        assert contents(back) == contents(tree)
        saved = await files.download("proj/data.bin", tmp_path / "data.bin")
        assert saved.read_bytes() == (tree / "data.bin").read_bytes()
        assert "run.sh" in [entry.name for entry in await files.list("proj")]
        await files.remove("proj", recursive=True)
        with pytest.raises(HearthApiError) as missing:
            await files.list("proj")
        assert missing.value.code == "path_not_found"


def test_hearth_files_put_get_ls_rm(
    ann: Hearth, ann_env: dict[str, str], live: Live, tmp_path: Path
) -> None:
    vm = ann.vms.create("cli")
    env = ann_env
    tree = local_tree(tmp_path / "tree")

    put = hearth_cli("files", "put", vm.id, str(tree), "proj", env=env, timeout=120)
    assert put.returncode == 0, put.stderr
    assert "7 entries" in put.stdout
    single = hearth_cli(
        "files", "put", vm.id, str(tree / "run.sh"), "bin/run.sh", env=env, timeout=120
    )
    assert single.returncode == 0, single.stderr
    assert "sha256" in single.stdout

    got = hearth_cli("files", "get", vm.id, "proj", str(tmp_path / "back"), env=env, timeout=120)
    assert got.returncode == 0, got.stderr
    assert contents(tmp_path / "back") == contents(tree)
    # A directory's tar past --max-bytes (the SDK's bound) is refused, nothing saved.
    capped = tmp_path / "capped"
    too_big = hearth_cli(
        "files", "get", vm.id, "proj", str(capped), "--max-bytes", "1024", env=env, timeout=120
    )
    assert too_big.returncode == 1, too_big.stdout + too_big.stderr
    assert "invalid_archive" in too_big.stderr
    assert "larger than max_bytes (1024 bytes)" in " ".join(too_big.stderr.split())
    assert not capped.exists()
    cat = hearth_cli("files", "get", vm.id, "bin/run.sh", "-", env=env, timeout=120)
    assert cat.stdout == "#!/bin/sh\necho run\n"

    listed = hearth_cli("files", "ls", vm.id, "proj", env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "0755" in listed.stdout
    assert "latest -> src/pkg/mod.py" in listed.stdout

    refused = hearth_cli("files", "rm", vm.id, "proj", env=env, timeout=120)
    assert refused.returncode == 1
    assert "path_conflict" in refused.stderr
    removed = hearth_cli("files", "rm", "-r", vm.id, "proj", env=env, timeout=120)
    assert removed.returncode == 0, removed.stderr
    assert not (workspace(live, vm.id) / "proj").exists()
    outside = hearth_cli("files", "put", vm.id, str(tree / "run.sh"), "../x", env=env)
    assert outside.returncode == 1
    assert "path_outside_workspace" in outside.stderr


# --- uploads from what is not a plain file, or changes while it is sent --------------------------


def fifo_fed(path: Path, data: bytes) -> threading.Thread:
    """A FIFO at ``path`` that a thread fills with ``data`` once a reader opens it."""
    os.mkfifo(path)
    writer = threading.Thread(target=path.write_bytes, args=(data,), daemon=True)
    writer.start()
    return writer


def pipe_fed(data: bytes) -> tuple[Path, int]:
    """The read end of a pipe a thread fills with ``data`` (as ``<(cmd)`` gives it), and its
    descriptor to close."""
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return Path(f"/dev/fd/{read_end}"), read_end


Write = Callable[..., Awaitable[FileWritten]]


@contextlib.asynccontextmanager
async def both_writes(ann: Hearth, live: Live, vm_id: str) -> AsyncIterator[list[Write]]:
    """``files.write`` of VM ``vm_id`` in the sync client (on a thread) and the async one."""
    async with AsyncHearth(live.url, live.keys["ann"]) as client:
        files = ann.vms.get(vm_id).files

        async def sync_write(*args: Any, **options: Any) -> FileWritten:
            return await asyncio.to_thread(files.write, *args, **options)

        yield [sync_write, (await client.vms.get(vm_id)).files.write]


async def test_pipes_fifos_and_proc_files_are_sent_to_their_end_by_both_clients(
    ann: Hearth, live: Live, tmp_path: Path
) -> None:
    # Their size says nothing (0): they go chunked, read to their end, never with a length.
    vm = ann.vms.create("cli")
    data = os.urandom(3 * MIB + 5)
    cmdline = Path("/proc/self/cmdline").read_bytes()
    async with both_writes(ann, live, vm.id) as writes:
        for n, write in enumerate(writes):
            pipe, read_end = pipe_fed(data)
            try:
                assert (await write(f"pipe{n}.bin", pipe)).size == len(data)
            finally:
                os.close(read_end)
            fifo = fifo_fed(tmp_path / f"fifo{n}", data)
            assert (await write(f"fifo{n}.bin", tmp_path / f"fifo{n}")).size == len(data)
            fifo.join(5)
            proc = Path("/proc/self/cmdline")
            assert (await write(f"cmdline{n}", proc)).size == len(cmdline)
    files = workspace(live, vm.id)
    for n in (0, 1):
        assert (files / f"pipe{n}.bin").read_bytes() == data
        assert (files / f"fifo{n}.bin").read_bytes() == data
        assert (files / f"cmdline{n}").read_bytes() == cmdline
        # A pipe has no mode of its own to keep: the default, not the pipe's 0600.
        assert (files / f"pipe{n}.bin").stat().st_mode & 0o777 == 0o644


async def test_a_file_growing_while_sent_goes_as_it_was_and_one_shrinking_is_refused(
    ann: Hearth, live: Live, tmp_path: Path
) -> None:
    vm = ann.vms.create("cli")
    log, big = tmp_path / "app.log", tmp_path / "big.bin"

    def append(done: int) -> None:
        with log.open("ab") as handle:
            handle.write(b"written later\n")

    def truncate(done: int) -> None:
        os.truncate(big, 10)

    async with both_writes(ann, live, vm.id) as writes:
        for n, write in enumerate(writes):
            log.write_bytes(b"first line\n")
            grown = await write(f"app{n}.log", log, progress=append)
            assert grown.size == len(b"first line\n")
            big.write_bytes(os.urandom(2 * MIB + 1))  # two chunks: the second read finds less
            with pytest.raises(LocalFileChanged) as shrunk:
                await write(f"big{n}.bin", big, progress=truncate)
            assert (shrunk.value.declared, shrunk.value.read) == (2 * MIB + 1, MIB)
            assert "nothing was written" in str(shrunk.value)
    files = workspace(live, vm.id)
    for n in (0, 1):
        assert (files / f"app{n}.log").read_bytes() == b"first line\n"
        assert not (files / f"big{n}.bin").exists()


def test_hearth_files_put_reads_a_process_substitution(
    ann: Hearth, ann_env: dict[str, str], live: Live
) -> None:
    vm = ann.vms.create("cli")
    put = subprocess.run(
        ["bash", "-c", f"{shlex.join(HEARTH)} files put {vm.id} <(echo hi) greeting.txt"],
        capture_output=True,
        text=True,
        env={**os.environ, **ann_env},
        timeout=120,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("greeting.txt: 3 bytes")
    assert (workspace(live, vm.id) / "greeting.txt").read_bytes() == b"hi\n"


def test_hearth_files_get_to_stdout_whose_reader_goes_away_exits_141_quietly(
    ann: Hearth, ann_env: dict[str, str], live: Live
) -> None:
    # `hearth files get VM big.bin - | head -c 10`: head exits once it has its bytes.
    vm = ann.vms.create("cli")
    (workspace(live, vm.id) / "big.bin").write_bytes(os.urandom(8 * MIB))
    get = subprocess.Popen(
        [*HEARTH, "files", "get", vm.id, "big.bin", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **ann_env},
    )
    assert get.stdout is not None
    assert len(get.stdout.read(10)) == 10
    get.stdout.close()
    _, err = get.communicate(timeout=120)

    assert get.returncode == 141, err
    assert err == b""  # no traceback, no "Exception ignored"


# --- what the command line prints, and where it puts things -------------------------------------


def test_hearth_files_prints_names_as_they_are_never_as_markup(
    ann: Hearth, ann_env: dict[str, str], tmp_path: Path
) -> None:
    vm, env = ann.vms.create("cli"), ann_env
    source = tmp_path / "source.txt"
    source.write_text("x\n")
    for name in ("app/[id].tsx", "app/notes[/]x.txt", "app/[bold]b:thumbs_up:.txt"):
        put = hearth_cli("files", "put", vm.id, str(source), name, env=env, timeout=120)
        assert put.returncode == 0, put.stderr
        assert put.stdout.startswith(f"{name}: 2 bytes"), put.stdout
    listed = hearth_cli("files", "ls", vm.id, "app", env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = [line.rstrip().split("  ")[-1].strip() for line in listed.stdout.splitlines()]
    assert sorted(names) == ["[bold]b:thumbs_up:.txt", "[id].tsx", "notes[/"], listed.stdout
    got = hearth_cli("files", "get", vm.id, "app/[id].tsx", str(tmp_path), env=env, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stderr.strip() == f"saved {tmp_path / '[id].tsx'}"


def test_a_trailing_slash_names_a_directory_for_put_and_get(
    ann: Hearth, ann_env: dict[str, str], live: Live, tmp_path: Path
) -> None:
    # As for cp: "dir/" is a directory, and a file goes into it under its own name; here one
    # that is missing is made (put makes every missing parent in the VM anyway).
    vm, env = ann.vms.create("cli"), ann_env
    source = tmp_path / "notes.txt"
    source.write_text("notes\n")
    files = workspace(live, vm.id)

    put = hearth_cli("files", "put", vm.id, str(source), "newdir/", env=env, timeout=120)
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("newdir/notes.txt: 6 bytes")
    assert (files / "newdir" / "notes.txt").read_text() == "notes\n"
    piped = hearth_cli("files", "put", vm.id, "-", "newdir/", env=env, timeout=120)
    assert piped.returncode == 1
    assert "name the file" in piped.stderr

    dl = tmp_path / "dl"
    got = hearth_cli("files", "get", vm.id, "newdir/notes.txt", f"{dl}/", env=env, timeout=120)
    assert got.returncode == 0, got.stderr
    assert (dl / "notes.txt").read_text() == "notes\n"
    tree = hearth_cli("files", "get", vm.id, "newdir", f"{tmp_path / 'tree'}/", env=env)
    assert tree.returncode == 0, tree.stderr
    assert (tmp_path / "tree" / "notes.txt").read_text() == "notes\n"
    # A download that fails leaves no directory behind; one whose parent is missing is refused.
    missing = hearth_cli("files", "get", vm.id, "nope", f"{tmp_path / 'dl2'}/", env=env)
    assert missing.returncode == 1
    assert "path_not_found" in missing.stderr
    assert not (tmp_path / "dl2").exists()
    orphan = hearth_cli("files", "get", vm.id, "newdir/notes.txt", f"{tmp_path}/a/b/", env=env)
    assert orphan.returncode == 1
    assert "No such file or directory" in orphan.stderr
