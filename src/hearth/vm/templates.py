"""Snapshot template store: saved VMs under one root dir, each built at most once per key.

A template is a directory named by its key that holds the files its backend's clones restore
from, ``template.json`` (key, origin, build time and whatever the build reported) and an empty
``COMPLETE`` marker. A build runs in a staging dir ``.<key>-*`` under an asyncio lock (one
build per key in this process) and an fcntl lock on ``.<key>.lock`` (one across processes); the
staging dir is renamed into place only once complete, so a half-built template is never seen.
A new template of an origin (image + size) replaces the older ones of that origin, except one
a VM is being restored from (``in_use``: a shared fcntl lock on ``.<key>.use`` from before the
VMM opens its files until the VM is up): its removal waits for the next template of its origin.
Each new template also removes the ``.lock`` and ``.use`` files of keys that have no template (nor
build) left, so they do not pile up with every rebuild. Such a file is only removed by whoever
holds its lock exclusively, and a lock taken on a file no longer at its path is taken again on the
file there now (``_hold``), so two processes never hold "the" lock on two files of one name.
Each backend subclasses ``SnapshotTemplate`` to name its files and ``SnapshotTemplateStore`` to
pick it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, overload

from hearth.errors import SnapshotError
from hearth.logging import get_logger

_log = get_logger("vm.templates")

# Builds a template into the given staging dir: boot, wait healthy, save its files there;
# returns extra metadata for template.json, or None.
TemplateBuilder = Callable[[Path], Awaitable[Mapping[str, Any] | None]]
_KEY = re.compile(r"[0-9a-f]+")  # what ``template_key_of`` makes (tests use short ones)


class TemplateFile:
    """One file of a template, declared on its class: ``disk = TemplateFile("disk.ext4")``.

    Read on a template it is the file's path. ``frozen`` files are made read-only once built:
    clones layer on them or map them, so they must never change.
    """

    def __init__(self, name: str, *, frozen: bool = True) -> None:
        self.name = name
        self.frozen = frozen

    @overload
    def __get__(self, template: None, owner: type[Any]) -> TemplateFile: ...

    @overload
    def __get__(self, template: SnapshotTemplate, owner: type[Any]) -> Path: ...

    def __get__(self, template: SnapshotTemplate | None, owner: type[Any]) -> TemplateFile | Path:
        return self if template is None else template.directory / self.name


@dataclass(frozen=True)
class SnapshotTemplate:
    """A saved template ready to be restored; subclasses declare its ``TemplateFile``s."""

    key: str
    directory: Path

    @classmethod
    def files(cls) -> list[TemplateFile]:
        """The files every complete template of this kind holds."""
        found: dict[str, TemplateFile] = {}
        for klass in reversed(cls.__mro__):
            found |= {k: v for k, v in vars(klass).items() if isinstance(v, TemplateFile)}
        return list(found.values())

    def is_complete(self) -> bool:
        """Whether the build finished: marked COMPLETE and holding all of its files."""
        if not (self.directory / "COMPLETE").exists():
            return False
        return all((self.directory / f.name).exists() for f in self.files())


TemplateT = TypeVar("TemplateT", bound=SnapshotTemplate)


def file_identity(path: Path) -> list[Any]:
    """What tells one file from its replacement, for key material: path, inode, size, mtime."""
    st = path.stat()
    return [str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns]


def template_key_of(material: Mapping[str, Any]) -> str:
    """A template key: a short digest of everything a clone must share with its template."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def _is_at(file: IO[str], path: Path) -> bool:
    """Whether the open ``file`` is still the file at ``path`` (not removed nor replaced)."""
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _hold(path: Path, operation: int) -> IO[str] | None:
    """Open ``path`` (made if missing) and ``flock`` it with ``operation``: the open file
    (closing it lets go), or None when ``LOCK_NB`` is in ``operation`` and the lock is taken.

    A waiter may end up holding a file its holder removed meanwhile (``_remove_held``): that
    lock guards nothing any more, so it is let go and the file now at ``path`` is locked."""
    while True:
        file = path.open("a")
        try:
            fcntl.flock(file, operation)
        except BlockingIOError:
            file.close()
            return None
        except BaseException:
            file.close()
            raise
        if _is_at(file, path):
            return file
        file.close()


def _remove_held(path: Path) -> bool:
    """Remove the lock file at ``path`` if nobody holds its lock; whether it is gone."""
    file = _hold(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if file is None:
        return False
    with file:
        path.unlink(missing_ok=True)  # while held: a waiter on it then locks a new file
    return True


class SnapshotTemplateStore(Generic[TemplateT]):
    """Templates on disk under one root, built at most once per key (across processes too)."""

    # The kind of template this store holds; each backend's store sets it.
    template_class: type[TemplateT]

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def lookup(self, key: str) -> TemplateT | None:
        """The complete template for ``key``, if there is one."""
        template = self.template_class(key, self.root / key)
        return template if template.is_complete() else None

    async def ensure(
        self, key: str, *, origin: str, build: TemplateBuilder
    ) -> tuple[TemplateT, bool]:
        """The template for ``key``, building it first if needed; returns it and whether built.

        ``origin`` names what the template was made from (image + size): once built, older
        templates of the same origin are removed.
        """
        found = self.lookup(key)
        if found:
            return found, False
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self.lookup(key)
            if found:
                return found, False
            self.root.mkdir(parents=True, exist_ok=True)
            lock_path = self._lock_path(key)
            while True:
                with lock_path.open("a") as lock_file:
                    await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
                    if not _is_at(lock_file, lock_path):
                        continue  # removed while we waited (see ``_hold``): lock the new one
                    try:
                        found = self.lookup(key)
                        if found:
                            return found, False
                        return await self._build(key, origin=origin, build=build), True
                    finally:
                        fcntl.flock(lock_file, fcntl.LOCK_UN)

    def abandoned_builds(self) -> list[Path]:
        """Staging dirs of template builds that nobody is running (their builder died)."""
        return [staging for staging, running in self._staging() if not running]

    def builds_in_progress(self) -> list[Path]:
        """Staging dirs of template builds running now (in this process or another: a
        ``hearth image build`` beside the controller)."""
        return [staging for staging, running in self._staging() if running]

    def _staging(self) -> list[tuple[Path, bool]]:
        """Every staging dir, and whether its build runs (its key's lock is held)."""
        if not self.root.is_dir():
            return []
        found = []
        for staging in sorted(self.root.glob(".*-*")):
            if not staging.is_dir():
                continue
            key = staging.name[1:].rsplit("-", 1)[0]
            lock_file = _hold(self._lock_path(key), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if lock_file is not None:
                lock_file.close()
            found.append((staging, lock_file is None))
        return found

    @contextmanager
    def in_use(self, template: TemplateT) -> Iterator[None]:
        """Keep ``template`` from being pruned while a VM is restored from it (across processes
        too); SnapshotError when it is gone or going already (the caller boots cold)."""
        use = _hold(self._use_path(template.key), fcntl.LOCK_SH | fcntl.LOCK_NB)
        if use is None:
            raise SnapshotError(f"template {template.key} is being removed")
        with use:
            if not template.is_complete():
                raise SnapshotError(f"template {template.key} was removed before its restore")
            yield

    def discard(self, template: TemplateT) -> None:
        """Remove a template (e.g. one that failed to restore) so the next create rebuilds it."""
        shutil.rmtree(template.directory, ignore_errors=True)
        _log.warning("template_discarded", key=template.key)

    def _lock_path(self, key: str) -> Path:
        return self.root / f".{key}.lock"

    def _use_path(self, key: str) -> Path:
        return self.root / f".{key}.use"

    async def _build(self, key: str, *, origin: str, build: TemplateBuilder) -> TemplateT:
        """Build into a staging dir, freeze and describe it, then rename it into place."""
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}-"))
        started = time.monotonic()
        try:
            meta = await build(staging)
            for file in self.template_class.files():
                path = staging / file.name
                if not path.exists():
                    raise SnapshotError(f"template {key}: the build left no {file.name}")
                if file.frozen:
                    path.chmod(0o444)
            (staging / "template.json").write_text(
                json.dumps({**(meta or {}), "key": key, "origin": origin, "built_at": time.time()})
            )
            (staging / "COMPLETE").write_text("")
            staging.rename(self.root / key)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _log.info("template_built", key=key, duration_s=round(time.monotonic() - started, 2))
        self._prune(keep=key, origin=origin)
        return self.template_class(key, self.root / key)

    def _prune(self, *, keep: str, origin: str) -> None:
        """Remove older templates of the same origin (image + size) that nothing restores now."""
        for directory in self.root.iterdir():
            if directory.name == keep or not (directory / "template.json").exists():
                continue
            try:
                meta = json.loads((directory / "template.json").read_text())
            except (OSError, ValueError):
                continue
            if meta.get("origin") == origin:
                self._remove_unused(directory)
        self._remove_lock_files(keep=keep)

    def _remove_unused(self, directory: Path) -> None:
        """Remove a template unless a VM is being restored from it. Running clones keep its
        files open (or pinned), so removal only drops the names; a restore still starting
        opens them by name."""
        use = _hold(self._use_path(directory.name), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if use is None:
            _log.info("template_prune_deferred", key=directory.name, reason="restoring")
            return
        with use:
            shutil.rmtree(directory, ignore_errors=True)
        _log.info("template_pruned", key=directory.name)

    def _remove_lock_files(self, *, keep: str) -> None:
        """Remove the ``.lock`` and ``.use`` files of keys with neither a template dir nor a
        staging dir (pruned, discarded, or whose build failed), unless someone holds them."""
        for path in [*self.root.glob(".*.lock"), *self.root.glob(".*.use")]:
            key = path.name[1:].rsplit(".", 1)[0]
            if not _KEY.fullmatch(key) or key == keep:
                continue  # not a template's (keys are hex digests), or the one just built
            if (self.root / key).exists() or any(self.root.glob(f".{key}-*")):
                continue
            _remove_held(path)
