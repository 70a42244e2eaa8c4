"""A template store's ``.lock`` and ``.use`` files go with their templates, without ever letting
two builders of one key (or a pruner and a restore) lock two different files of one name."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from hearth.errors import SnapshotError
from hearth.vm.firecracker.templates import FcTemplateStore
from hearth.vm.qemu.templates import TemplateStore
from hearth.vm.templates import SnapshotTemplateStore

Store = SnapshotTemplateStore[Any]


class Root:
    """A template store's root: build templates in it (or fail to), restore from one, list it."""

    def __init__(self, store_class: type[Store], root: Path) -> None:
        self.store, self.path = store_class(root), root
        self.files = [f.name for f in store_class.template_class.files()]

    async def build(self, key: str, origin: str = "img:small", *, fail: bool = False) -> Any:
        async def build(directory: Path) -> None:
            if fail:
                raise SnapshotError("the VM did not come up")
            for name in self.files:
                (directory / name).write_bytes(b"saved")

        template, _ = await self.store.ensure(key, origin=origin, build=build)
        return template

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir())


@pytest.fixture(params=[TemplateStore, FcTemplateStore], ids=["qemu", "firecracker"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    """A root of each backend's template store."""
    return Root(request.param, tmp_path)


async def test_rebuilds_of_an_origin_leave_only_the_newest_template_and_its_lock(
    root: Root,
) -> None:
    for key in ("a1", "b2", "c3", "d4", "e5"):
        with root.store.in_use(await root.build(key)):  # a restore makes its .use file
            pass
    assert root.names() == [".e5.lock", ".e5.use", "e5"]


async def test_lock_files_of_failed_and_discarded_builds_go_with_the_next_template(
    root: Root,
) -> None:
    root.store.discard(await root.build("d0", "img:large"))
    with pytest.raises(SnapshotError):
        await root.build("f0", fail=True)
    (root.path / ".image-build.lock").write_text("")  # not a template's: left alone
    assert root.names() == [".d0.lock", ".f0.lock", ".image-build.lock"]
    await root.build("a1", "img:other")
    assert root.names() == [".a1.lock", ".image-build.lock", "a1"]


async def test_files_held_by_a_restore_or_a_build_stay_until_they_are_let_go(root: Root) -> None:
    old = await root.build("a1")
    with (root.path / ".0ff.lock").open("a") as held, root.store.in_use(old):
        fcntl.flock(held, fcntl.LOCK_EX)  # a build of 0ff starting elsewhere
        await root.build("b2")
        assert root.names() == [".0ff.lock", ".a1.lock", ".a1.use", ".b2.lock", "a1", "b2"]
    await root.build("c3")
    assert root.names() == [".c3.lock", "c3"]


def test_a_waiter_on_a_lock_file_removed_meanwhile_never_holds_it_beside_a_new_holder(
    tmp_path: Path,
) -> None:
    from hearth.vm.templates import _hold, _remove_held  # the lock files' own discipline

    path = tmp_path / ".k.lock"
    remover = _hold(path, fcntl.LOCK_EX)
    assert remover is not None
    waiter_holds = threading.Event()
    release_waiter = threading.Event()

    def wait_for_the_lock() -> None:
        file = _hold(path, fcntl.LOCK_EX)  # opens the file the remover holds, then waits
        assert file is not None
        with file:
            waiter_holds.set()
            release_waiter.wait(10)

    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    time.sleep(0.2)  # the waiter has opened the old file and waits on its lock
    path.unlink()  # what ``_remove_held`` does: remove it while holding it, then let go
    remover.close()
    newcomer: IO[str] | None = _hold(path, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file
    time.sleep(0.2)
    try:
        # Exactly one of them holds the lock of the file at the path; never both.
        assert (newcomer is not None) != waiter_holds.is_set()
        if newcomer is not None:
            newcomer.close()
            assert waiter_holds.wait(10)  # then it gets the file now at the path
        assert _remove_held(path) is False  # the waiter holds it
    finally:
        release_waiter.set()
        waiter.join(10)
    assert _remove_held(path) is True
    assert not path.exists()
