"""``vm.files`` of the SDK (sync over real HTTP, async in process) and ``hearth files``, against
the API over VMs whose agents are real processes on loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hearth.sdk import AsyncHearth, FileWritten, Hearth, HearthApiError
from tests.agent_backend import AgentBackend
from tests.conftest import hearth_cli
from tests.integration.api_fixtures import BASE_URL, Api
from tests.integration.sdk_fixtures import *  # noqa: F403
from tests.integration.sdk_fixtures import Live

MIB = 1024 * 1024


@pytest.fixture
def ann(live: Live) -> Iterator[Hearth]:
    """ann's sync client, straight to the served API."""
    with Hearth(live.url, live.keys["ann"]) as client:
        yield client


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


def test_hearth_files_put_get_ls_rm(ann: Hearth, live: Live, tmp_path: Path) -> None:
    vm = ann.vms.create("cli")
    env = {"HEARTH_URL": live.url, "HEARTH_API_KEY": live.keys["ann"]}
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
