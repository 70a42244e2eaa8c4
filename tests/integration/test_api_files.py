"""``/api/vms/{id}/files`` in process, on SQLite and PostgreSQL, over VMs whose agents are real
processes on loopback (``AgentBackend``): every byte really reaches a workspace on disk.

The 100 MB round trip goes over real HTTP (uvicorn on loopback, the sdk fixtures' ``live``),
with the memory of this process (client and controller) and of the agent sampled meanwhile:
nothing may hold the file whole. What only a VM shows is in ``tests/vm/test_files.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.sdk_fixtures import *  # noqa: F403
from tests.integration.sdk_fixtures import Live

MIB = 1024 * 1024
CAP = 4 * MIB  # HEARTH_FILES_MAX_BYTES for these tests (HEARTH_MAX_BODY_BYTES stays 1 MiB)
BIG = 100 * 1000 * 1000


@pytest.fixture
async def files_api(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller in process over VMs with real agents, with a small files cap."""
    settings = api_settings.with_overrides(files_max_bytes=CAP)
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


async def new_vm(api: Api, user: str, vm_type: str = "cli") -> tuple[str, dict[str, str]]:
    """A ready VM of ``user``'s (a Browser VM made with the admin key: only it may), and that
    user's headers."""
    headers = api.headers(await api.user_key(user))
    maker = headers if vm_type == "cli" else api.headers()
    body = {"userId": user, "vmType": vm_type}
    created = await api.client.post("/api/vms", json=body, headers=maker)
    assert created.status_code == 201, created.text
    return created.json()["id"], headers


def agent_root(api: Api, vm_id: str) -> Path:
    """Everything of VM ``vm_id``'s agent on disk: its home (with the workspace) and secrets."""
    backend = api.backend
    assert isinstance(backend, AgentBackend)
    return backend.launcher.root / vm_id


def workspace(api: Api, vm_id: str) -> Path:
    return agent_root(api, vm_id) / "home" / "workspace"


def snapshot(*tops: Path) -> dict[str, tuple[str, object]]:
    """Every path under ``tops``: its kind and content (or link target)."""
    found: dict[str, tuple[str, object]] = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                if path.is_symlink():
                    found[str(path)] = ("symlink", os.readlink(path))
                elif path.is_dir():
                    found[str(path)] = ("dir", None)
                else:
                    found[str(path)] = ("file", path.read_bytes())
    return found


def tar_bytes(*members: tuple[str, bytes, str | None], kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar of (name, content, link target) members: files, or links where a target is set."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link is None:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
            else:
                info.type = tarfile.SYMTYPE if link.startswith("sym:") else tarfile.LNKTYPE
                info.linkname = link.removeprefix("sym:")
                archive.addfile(info)
    return raw.getvalue()


def tree_tar(root: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for path in sorted(root.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return raw.getvalue()


async def put(
    api: Api, vm_id: str, path: str, content: Any, headers: dict[str, str], **extra: str
) -> httpx.Response:
    return await api.client.put(
        f"/api/vms/{vm_id}/files", params={"path": path}, content=content, headers=headers | extra
    )


# ---- what works ----------------------------------------------------------------------------


async def test_a_file_is_written_read_listed_and_removed(files_api: Api) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    # Over HEARTH_MAX_BODY_BYTES (1 MiB): uploads have their own cap.
    data = os.urandom(3 * MIB + 5)
    written = await api.client.put(
        f"/api/vms/{vm_id}/files",
        params={"path": "src/data.bin", "mode": "0600"},
        content=data,
        headers=headers,
    )
    assert written.status_code == 200, written.text
    assert written.json() == {
        "path": "src/data.bin",
        "type": "file",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mode": "0600",
        "entries": None,
    }
    on_disk = workspace(api, vm_id) / "src" / "data.bin"
    assert on_disk.read_bytes() == data
    assert on_disk.stat().st_mode & 0o777 == 0o600

    read = await api.client.get(
        f"/api/vms/{vm_id}/files", params={"path": "src/data.bin"}, headers=headers
    )
    assert read.status_code == 200
    assert read.headers["x-hearth-file-type"] == "file"
    assert read.headers["content-type"] == "application/octet-stream"
    assert read.headers["content-length"] == str(len(data))
    assert read.content == data

    listed = await api.client.get(
        f"/api/vms/{vm_id}/files/list", params={"path": "src"}, headers=headers
    )
    assert listed.status_code == 200
    (entry,) = listed.json()["entries"]
    assert entry["name"] == "data.bin"
    assert (entry["type"], entry["size"], entry["mode"]) == ("file", len(data), "0600")

    removed = await api.client.delete(
        f"/api/vms/{vm_id}/files", params={"path": "src/data.bin"}, headers=headers
    )
    assert removed.json() == {"path": "src/data.bin", "type": "file", "removed": True}
    assert not on_disk.exists()


async def test_a_directory_tree_goes_in_as_a_tar_and_comes_out_as_one(
    files_api: Api, tmp_path: Path
) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    local = tmp_path / "local"
    (local / "pkg" / "sub").mkdir(parents=True)
    (local / "pkg" / "sub" / "deep.txt").write_text("deep")
    (local / "pkg" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (local / "pkg" / "run.sh").chmod(0o755)
    (local / "blob").write_bytes(os.urandom(200_000))
    (local / "link").symlink_to("pkg/run.sh")
    written = await put(
        api, vm_id, "proj", tree_tar(local), headers, **{"Content-Type": "application/x-tar"}
    )
    assert written.status_code == 200, written.text
    assert written.json()["type"] == "dir"
    assert written.json()["entries"] == 6
    remote = workspace(api, vm_id) / "proj"
    assert snapshot(remote) == {
        key.replace(str(local), str(remote)): value for key, value in snapshot(local).items()
    }
    assert (remote / "pkg" / "run.sh").stat().st_mode & 0o777 == 0o755

    read = await api.client.get(f"/api/vms/{vm_id}/files", params={"path": "proj"}, headers=headers)
    assert read.status_code == 200
    assert read.headers["x-hearth-file-type"] == "dir"
    assert read.headers["content-type"] == "application/x-tar"
    back = tmp_path / "back"
    with tarfile.open(fileobj=io.BytesIO(read.content)) as archive:
        archive.extractall(back, filter="data")
    assert snapshot(back) == {
        key.replace(str(local), str(back)): value for key, value in snapshot(local).items()
    }
    # The whole workspace, when no path is given.
    everything = await api.client.get(f"/api/vms/{vm_id}/files", headers=headers)
    with tarfile.open(fileobj=io.BytesIO(everything.content)) as archive:
        assert "proj/pkg/sub/deep.txt" in archive.getnames()


# ---- what is refused -----------------------------------------------------------------------

TAR = {"Content-Type": "application/x-tar"}
ESCAPES: dict[str, tuple[str, Callable[[Path], bytes], dict[str, str]]] = {
    "dotdot": ("../escaped", lambda outside: b"x", {}),
    "dotdot-deep": ("a/../../escaped", lambda outside: b"x", {}),
    "absolute": ("/tmp/hearth-escaped", lambda outside: b"x", {}),
    "through-a-symlink-out": ("out/secret", lambda outside: b"overwritten", {}),
    "onto-a-symlink-out": ("out", lambda outside: b"overwritten", {}),
    "tar-dotdot": ("t", lambda outside: tar_bytes(("../escaped", b"x", None)), TAR),
    "tar-absolute": ("t", lambda outside: tar_bytes(("/tmp/hearth-escaped", b"x", None)), TAR),
    "tar-symlink-out-then-through-it": (
        "t",
        lambda outside: tar_bytes(
            ("link", b"", f"sym:{outside}"), ("link/secret", b"overwritten", None)
        ),
        TAR,
    ),
    "tar-relative-symlink-out": (
        "t",
        lambda outside: tar_bytes(("link", b"", "sym:../../../outside")),
        TAR,
    ),
    "tar-hardlink-out": (
        "t",
        lambda outside: tar_bytes(("hard", b"", str(outside / "secret"))),
        TAR,
    ),
    "tar-into-a-symlink-out": ("out", lambda outside: tar_bytes(("secret", b"x", None)), TAR),
}


@pytest.mark.parametrize("case", list(ESCAPES))
async def test_every_escape_is_422_with_nothing_written(
    files_api: Api, tmp_path: Path, case: str
) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    (workspace(api, vm_id) / "out").symlink_to(outside)
    path, content, extra = ESCAPES[case]
    before = snapshot(agent_root(api, vm_id), outside)
    answer = await put(api, vm_id, path, content(outside), headers, **extra)
    assert_error(answer, 422, "path_outside_workspace")
    assert snapshot(agent_root(api, vm_id), outside) == before
    assert not Path("/tmp/hearth-escaped").exists()


async def test_reading_or_listing_through_a_symlink_out_is_422(
    files_api: Api, tmp_path: Path
) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    (workspace(api, vm_id) / "out").symlink_to(tmp_path)
    for route in ("/files", "/files/list"):
        for path in ("out", "out/x", "../x", "/etc"):
            answer = await api.client.get(
                f"/api/vms/{vm_id}{route}", params={"path": path}, headers=headers
            )
            assert_error(answer, 422, "path_outside_workspace")


async def test_an_upload_over_the_cap_is_413_and_leaves_nothing(files_api: Api) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    (workspace(api, vm_id) / "kept").write_text("kept")
    before = snapshot(agent_root(api, vm_id))
    over = os.urandom(CAP + 1)

    big_tar = tar_bytes(("big", os.urandom(CAP), None))

    async def chunked(data: bytes = over) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    # Declared: refused unread. Chunked: the agent refuses at the cap and keeps nothing.
    assert_error(await put(api, vm_id, "big/new.bin", over, headers), 413, "file_too_large")
    assert_error(await put(api, vm_id, "big/new.bin", chunked(), headers), 413, "file_too_large")
    assert_error(await put(api, vm_id, "kept", chunked(), headers), 413, "file_too_large")
    too_big = chunked(big_tar)
    assert_error(await put(api, vm_id, "t", too_big, headers, **TAR), 413, "file_too_large")
    assert snapshot(agent_root(api, vm_id)) == before
    exactly = await put(api, vm_id, "exact.bin", over[:CAP], headers)
    assert exactly.status_code == 200, exactly.text


async def test_a_tar_whose_files_pass_the_cap_is_413_and_leaves_nothing(files_api: Api) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        info = tarfile.TarInfo("zeros")
        info.size = CAP + 1
        archive.addfile(info, io.BytesIO(bytes(CAP + 1)))
    before = snapshot(agent_root(api, vm_id))
    answer = await put(api, vm_id, "t", raw.getvalue(), headers, **TAR)
    assert_error(answer, 413, "file_too_large")
    assert snapshot(agent_root(api, vm_id)) == before


async def test_missing_paths_are_404_and_paths_of_the_wrong_kind_409(files_api: Api) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    (workspace(api, vm_id) / "dir" / "sub").mkdir(parents=True)
    (workspace(api, vm_id) / "file").write_text("x")
    files, listing = f"/api/vms/{vm_id}/files", f"/api/vms/{vm_id}/files/list"
    for call in (
        api.client.get(files, params={"path": "nope"}, headers=headers),
        api.client.get(listing, params={"path": "nope/deeper"}, headers=headers),
        api.client.delete(files, params={"path": "nope"}, headers=headers),
    ):
        assert_error(await call, 404, "path_not_found")
    assert_error(await put(api, vm_id, "dir", b"x", headers), 409, "path_conflict")
    assert_error(
        await put(api, vm_id, "file", tar_bytes(("a", b"a", None)), headers, **TAR),
        409,
        "path_conflict",
    )
    refused = await api.client.delete(files, params={"path": "dir"}, headers=headers)
    assert "recursive" in assert_error(refused, 409, "path_conflict")["message"]
    removed = await api.client.delete(
        files, params={"path": "dir", "recursive": "true"}, headers=headers
    )
    assert removed.status_code == 200
    garbage = await put(api, vm_id, "t", b"no tar at all" * 100, headers, **TAR)
    assert_error(garbage, 422, "invalid_archive")


async def test_another_users_vm_is_404_on_every_files_route(files_api: Api) -> None:
    api = files_api
    vm_id, ann = await new_vm(api, "ann")
    bob = api.headers(await api.user_key("bob"))
    files = f"/api/vms/{vm_id}/files"
    for call in (
        put(api, vm_id, "x", b"x", bob),
        api.client.get(files, params={"path": "x"}, headers=bob),
        api.client.delete(files, params={"path": "x"}, headers=bob),
        api.client.get(f"{files}/list", headers=bob),
    ):
        assert_error(await call, 404, "not_found")
    assert not (workspace(api, vm_id) / "x").exists()
    # An admin may.
    assert (await put(api, vm_id, "x", b"x", api.headers())).status_code == 200
    assert (await api.client.get(files, params={"path": "x"}, headers=ann)).content == b"x"


async def test_a_paused_vm_or_a_browser_vm_is_409_naming_why(files_api: Api) -> None:
    api = files_api
    vm_id, ann = await new_vm(api, "ann")
    # Without autoResume (with it, a file call resumes the VM: test_api_lifetimes).
    no_auto = {"autoResume": False}
    assert (await api.client.patch(f"/api/vms/{vm_id}", json=no_auto, headers=ann)).is_success
    assert (await api.client.post(f"/api/vms/{vm_id}/pause", headers=ann)).status_code == 200
    files = f"/api/vms/{vm_id}/files"
    for call in (
        put(api, vm_id, "x", b"x", ann),
        api.client.get(files, params={"path": "x"}, headers=ann),
        api.client.get(f"{files}/list", headers=ann),
        api.client.delete(files, params={"path": "x"}, headers=ann),
    ):
        assert "paused" in assert_error(await call, 409, "conflict")["message"]
    browser_id, bob = await new_vm(api, "bob", "browser")
    refused = await put(api, browser_id, "x", b"x", bob)
    assert "CLI VMs" in assert_error(refused, 409, "conflict")["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({}, "path"), ({"path": "x", "mode": "999"}, "mode"), ({"path": "x" * 5000}, "path")],
)
async def test_a_bad_query_is_422_naming_it(
    files_api: Api, params: dict[str, str], field: str
) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    answer = await api.client.put(
        f"/api/vms/{vm_id}/files", params=params, content=b"x", headers=headers
    )
    assert field in assert_error(answer, 422, "invalid_input")["message"]


# ---- 100 MB over real HTTP -----------------------------------------------------------------


class PeakRss:
    """Samples the resident memory of some processes every few milliseconds, in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.base = {pid: self._rss(pid) for pid in pids}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(pid: int) -> int:
        pages = Path(f"/proc/{pid}/statm").read_text().split()[1]
        return int(pages) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], self._rss(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self) -> dict[int, int]:
        """How far above its start each process went, in bytes."""
        return {pid: self.peak[pid] - self.base[pid] for pid in self.pids}


def pseudo_random(size: int, seed: bytes) -> Iterator[bytes]:
    """``size`` bytes that do not compress, made a MiB at a time."""
    counter = 0
    while size > 0:
        block = hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(min(MIB, size))
        counter += 1
        size -= len(block)
        yield block


def test_a_100_mb_file_round_trips_streamed_with_the_same_sha256(live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.keys['ann']}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=300) as client:
        created = client.post("/api/vms", json={})
        assert created.status_code == 201, created.text
        vm_id = created.json()["id"]
        backend = live.api.backend
        assert isinstance(backend, AgentBackend)
        sent = hashlib.sha256()

        def body() -> Iterator[bytes]:
            for block in pseudo_random(BIG, b"hearth"):
                sent.update(block)
                yield block

        with PeakRss([os.getpid(), backend.agent(vm_id).pid]) as memory:
            started = time.monotonic()
            written = client.put(
                f"/api/vms/{vm_id}/files", params={"path": "big.bin"}, content=body()
            )
            upload_s = time.monotonic() - started
            assert written.status_code == 200, written.text
            assert written.json()["sha256"] == sent.hexdigest()
            received, size = hashlib.sha256(), 0
            started = time.monotonic()
            with client.stream("GET", f"/api/vms/{vm_id}/files", params={"path": "big.bin"}) as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(BIG)
                for chunk in r.iter_raw():
                    received.update(chunk)
                    size += len(chunk)
            download_s = time.monotonic() - started
    on_disk = hashlib.sha256()
    with (backend.launcher.root / vm_id / "home" / "workspace" / "big.bin").open("rb") as handle:
        while block := handle.read(MIB):
            on_disk.update(block)
    assert size == BIG
    assert received.hexdigest() == sent.hexdigest() == on_disk.hexdigest()
    grown = {pid: f"{grew / MIB:.1f} MiB" for pid, grew in memory.growth().items()}
    print(f"\n100 MB through the API: up {upload_s:.2f} s, down {download_s:.2f} s; grew {grown}")
    # Client, controller (this process) and agent: none held the file whole.
    for pid, grew in memory.growth().items():
        assert grew < 40 * MIB, f"process {pid} grew by {grew / MIB:.0f} MiB"
