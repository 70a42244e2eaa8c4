"""The snapshot template store, run against each backend's store: one build per key, frozen
files, nothing left by a failed build, pruning, and staging dirs whose builder died."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hearth.errors import SnapshotError
from hearth.vm.firecracker.templates import FcTemplate, FcTemplateStore
from hearth.vm.qemu.templates import Template, TemplateStore
from hearth.vm.templates import SnapshotTemplateStore

Store = SnapshotTemplateStore[Any]

# A builder in a process of its own: it starts a real build, says where, then waits forever.
_CHILD_BUILDER = """
import asyncio, importlib, sys
from pathlib import Path

module, name = sys.argv[3].split(":")
store = getattr(importlib.import_module(module), name)(Path(sys.argv[1]))

async def build(directory):
    print(directory, flush=True)
    await asyncio.sleep(3600)

asyncio.run(store.ensure(sys.argv[2], origin="child", build=build))
"""


@pytest.fixture(params=[TemplateStore, FcTemplateStore], ids=["qemu", "firecracker"])
def store_class(request: pytest.FixtureRequest) -> type[Store]:
    """Each backend's template store."""
    cls: type[Store] = request.param
    return cls


class Builds:
    """A fake template build that writes every file its template kind holds and counts calls."""

    def __init__(self, store_class: type[Store], *, meta: Mapping[str, Any] | None = None) -> None:
        self.files = store_class.template_class.files()
        self.meta = meta
        self.dirs: list[Path] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, directory: Path) -> Mapping[str, Any] | None:
        self.dirs.append(directory)
        await asyncio.sleep(0.02)  # long enough for every other caller to queue up
        if self.gate is not None:
            await self.gate.wait()
        for file in self.files:
            (directory / file.name).write_bytes(b"saved")
        return self.meta


def _leftovers(root: Path) -> list[str]:
    """What is under the root besides lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_each_backend_names_its_files_and_which_are_frozen() -> None:
    assert [(f.name, f.frozen) for f in Template.files()] == [
        ("disk.qcow2", True),
        ("state.bin", False),
    ]
    assert [(f.name, f.frozen) for f in FcTemplate.files()] == [
        ("disk.ext4", True),
        ("vmstate", True),
        ("memory", True),
    ]
    template = FcTemplate("k", Path("/t/k"))
    assert (template.disk, template.vmstate, template.memory) == (
        Path("/t/k/disk.ext4"),
        Path("/t/k/vmstate"),
        Path("/t/k/memory"),
    )
    assert Template("k", Path("/t/k")).state == Path("/t/k/state.bin")


async def test_a_template_is_built_once_however_many_tasks_and_stores_ask(
    store_class: type[Store], tmp_path: Path
) -> None:
    # Two stores on one root stand for two processes: only the lock file orders them.
    stores = [store_class(tmp_path), store_class(tmp_path)]
    build = Builds(store_class)
    results = await asyncio.gather(
        *(stores[i % 2].ensure("aaaa", origin="img:small", build=build) for i in range(8))
    )
    assert len(build.dirs) == 1
    assert sorted(built for _, built in results) == [False] * 7 + [True]
    assert {template.directory for template, _ in results} == {tmp_path / "aaaa"}
    assert stores[1].lookup("aaaa") == results[0][0]
    assert _leftovers(tmp_path) == ["aaaa"]


async def test_a_built_template_is_frozen_and_records_its_origin_and_build_metadata(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    template, built = await store.ensure(
        "aaaa", origin="img:small", build=Builds(store_class, meta={"firecracker": "1.9"})
    )
    assert built
    assert (template.directory / "COMPLETE").exists()
    for file in store_class.template_class.files():
        mode = stat.S_IMODE((template.directory / file.name).stat().st_mode)
        assert (mode == 0o444) is file.frozen, file.name
    meta = json.loads((template.directory / "template.json").read_text())
    assert meta["key"] == "aaaa"
    assert meta["origin"] == "img:small"
    assert meta["firecracker"] == "1.9"
    assert meta["built_at"] > 0


async def test_a_builder_without_metadata_still_gets_template_json(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    template, _ = await store.ensure("aaaa", origin="img:small", build=Builds(store_class))
    meta = json.loads((template.directory / "template.json").read_text())
    assert set(meta) == {"key", "origin", "built_at"}


async def test_a_failed_build_leaves_nothing_and_the_next_ensure_builds_again(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)

    async def failing(directory: Path) -> None:
        (directory / "half-written").write_bytes(b"x")
        raise SnapshotError("the template VM died")

    with pytest.raises(SnapshotError, match="died"):
        await store.ensure("aaaa", origin="img:small", build=failing)
    assert _leftovers(tmp_path) == []
    assert store.lookup("aaaa") is None
    _, built = await store.ensure("aaaa", origin="img:small", build=Builds(store_class))
    assert built


async def test_a_build_that_leaves_out_a_file_fails_and_leaves_nothing(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    missing = store_class.template_class.files()[-1].name

    async def partial(directory: Path) -> None:
        for file in store_class.template_class.files()[:-1]:
            (directory / file.name).write_bytes(b"x")

    with pytest.raises(SnapshotError, match=f"left no {missing}"):
        await store.ensure("aaaa", origin="img:small", build=partial)
    assert _leftovers(tmp_path) == []


async def test_a_cancelled_build_leaves_nothing(store_class: type[Store], tmp_path: Path) -> None:
    store = store_class(tmp_path)
    build = Builds(store_class)
    build.gate = asyncio.Event()  # never set
    task = asyncio.create_task(store.ensure("aaaa", origin="img:small", build=build))
    while not build.dirs:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _leftovers(tmp_path) == []


async def test_a_new_template_replaces_older_ones_of_its_origin_only(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    old, _ = await store.ensure("aaaa", origin="img:small", build=Builds(store_class))
    other, _ = await store.ensure("bbbb", origin="img:large", build=Builds(store_class))
    new, _ = await store.ensure("cccc", origin="img:small", build=Builds(store_class))
    assert store.lookup(old.key) is None
    assert store.lookup(other.key) == other
    assert store.lookup(new.key) == new
    assert _leftovers(tmp_path) == ["bbbb", "cccc"]


async def test_a_discarded_template_is_built_again(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    template, _ = await store.ensure("aaaa", origin="img:small", build=Builds(store_class))
    store.discard(template)
    assert store.lookup("aaaa") is None
    assert not template.directory.exists()
    build = Builds(store_class)
    again, built = await store.ensure("aaaa", origin="img:small", build=build)
    assert built
    assert again == template
    assert len(build.dirs) == 1


async def test_an_incomplete_template_dir_is_not_found(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    (tmp_path / "aaaa").mkdir()
    for file in store_class.template_class.files():
        (tmp_path / "aaaa" / file.name).write_bytes(b"x")
    assert store.lookup("aaaa") is None  # not marked COMPLETE
    (tmp_path / "aaaa" / "COMPLETE").write_text("")
    assert store.lookup("aaaa") is not None
    (tmp_path / "aaaa" / store_class.template_class.files()[-1].name).unlink()
    assert store.lookup("aaaa") is None


async def _start_child_build(
    store_class: type[Store], root: Path, key: str
) -> tuple[asyncio.subprocess.Process, Path]:
    """A builder process with a build of ``key`` under way; returns it and its staging dir."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD_BUILDER,
        str(root),
        key,
        f"{store_class.__module__}:{store_class.__name__}",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert line, "the builder process exited before building"
    return proc, Path(line.decode().strip())


async def test_abandoned_builds_are_the_staging_dirs_of_dead_builders_only(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    assert store_class(tmp_path / "absent").abandoned_builds() == []
    children: list[asyncio.subprocess.Process] = []
    in_process = Builds(store_class)
    in_process.gate = asyncio.Event()
    building = asyncio.create_task(store.ensure("cccc", origin="o", build=in_process))
    try:
        dead, dead_staging = await _start_child_build(store_class, tmp_path, "aaaa")
        children.append(dead)
        live, live_staging = await _start_child_build(store_class, tmp_path, "bbbb")
        children.append(live)
        dead.kill()
        await dead.wait()
        while not in_process.dirs:
            await asyncio.sleep(0.01)

        assert dead_staging.is_dir()
        assert live_staging.is_dir()
        assert store.abandoned_builds() == [dead_staging]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        in_process.gate.set()
        await building
    # Once the live builder is gone too, its staging dir is abandoned as well.
    assert store.abandoned_builds() == [dead_staging, live_staging]


async def test_a_template_being_restored_from_outlives_a_newer_one_of_its_origin(
    store_class: type[Store], tmp_path: Path
) -> None:
    # The newer template is built by another process (``hearth image build`` beside the
    # controller): a second store on the same root.
    restoring, building = store_class(tmp_path), store_class(tmp_path)
    old, _ = await restoring.ensure("aaaa", origin="img:small", build=Builds(store_class))
    with restoring.in_use(old):
        new, _ = await building.ensure("bbbb", origin="img:small", build=Builds(store_class))
        assert restoring.lookup(old.key) == old  # its files are still there to be opened
    assert building.lookup(new.key) == new
    # Once nothing restores from it, the next template of its origin removes it.
    newest, _ = await building.ensure("cccc", origin="img:small", build=Builds(store_class))
    assert _leftovers(tmp_path) == [newest.key]


async def test_a_template_removed_before_its_restore_cannot_be_used(
    store_class: type[Store], tmp_path: Path
) -> None:
    store = store_class(tmp_path)
    old, _ = await store.ensure("aaaa", origin="img:small", build=Builds(store_class))
    await store.ensure("bbbb", origin="img:small", build=Builds(store_class))
    with pytest.raises(SnapshotError, match="removed"), store.in_use(old):
        pass
