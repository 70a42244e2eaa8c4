"""Snapshot templates: one saved, booted-and-healthy VM per (image, VM size) that clones restore.

A template directory holds the template's frozen qcow2 layer (on the golden image), the saved
machine state, and ``template.json``. Clones put their own overlay on the frozen layer, so the
layer the saved state refers to never changes. The key includes the image file's identity, so an
image replaced by ``install-agent`` or a rebuild gets a new template automatically.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.vm.qemu.accel import Accel
from hearth.vm.types import VmSpec

TEMPLATE_FORMAT = 1
_log = get_logger("vm.templates")


@dataclass(frozen=True)
class Template:
    """A saved template ready to be restored."""

    key: str
    directory: Path

    @property
    def overlay(self) -> Path:
        """The frozen disk layer clones are stacked on."""
        return self.directory / "disk.qcow2"

    @property
    def state(self) -> Path:
        """The saved machine state (``migrate`` to file)."""
        return self.directory / "state.bin"


def template_key(image: ImageDir, spec: VmSpec, accel: Accel) -> str:
    """Identifies a template: image content and file identity, VM size, accelerator."""
    manifest = image.manifest
    identity = []
    for path in (image.rootfs, image.kernel, image.initramfs):
        st = path.stat()
        identity.append([str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns])
    material = {
        "format": TEMPLATE_FORMAT,
        "content_hash": manifest.content_hash if manifest else None,
        "files": identity,
        "size": spec.size_key,
        "network": spec.network.value,
        "accel": accel.name,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


# Builds a template into the given directory: boot, wait healthy, save disk + state there.
TemplateBuilder = Callable[[Path], Awaitable[None]]


class TemplateStore:
    """Templates on disk under one root, built at most once per key (across processes too)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def lookup(self, key: str) -> Template | None:
        """The complete template for ``key``, if there is one."""
        template = Template(key, self.root / key)
        if (template.directory / "COMPLETE").exists() and template.state.exists():
            return template
        return None

    async def ensure(
        self, key: str, *, origin: str, build: TemplateBuilder
    ) -> tuple[Template, bool]:
        """The template for ``key``, building it first if needed; returns it and whether built."""
        found = self.lookup(key)
        if found:
            return found, False
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self.lookup(key)
            if found:
                return found, False
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / f".{key}.lock").open("w") as lock_file:
                await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
                try:
                    found = self.lookup(key)
                    if found:
                        return found, False
                    staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}-"))
                    started = time.monotonic()
                    try:
                        await build(staging)
                        (staging / "template.json").write_text(
                            json.dumps({"key": key, "origin": origin, "built_at": time.time()})
                        )
                        (staging / "disk.qcow2").chmod(0o444)
                        (staging / "COMPLETE").write_text("")
                        staging.rename(self.root / key)
                    except BaseException:
                        shutil.rmtree(staging, ignore_errors=True)
                        raise
                    _log.info(
                        "template_built", key=key, duration_s=round(time.monotonic() - started, 2)
                    )
                    self._prune(keep=key, origin=origin)
                    return Template(key, self.root / key), True
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def abandoned_builds(self) -> list[Path]:
        """Staging dirs of template builds that nobody is running (their builder died)."""
        if not self.root.is_dir():
            return []
        found = []
        for staging in sorted(self.root.glob(".*-*")):
            if not staging.is_dir():
                continue
            key = staging.name[1:].rsplit("-", 1)[0]
            with (self.root / f".{key}.lock").open("w") as lock_file:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                fcntl.flock(lock_file, fcntl.LOCK_UN)
            found.append(staging)
        return found

    def discard(self, template: Template) -> None:
        """Remove a template (e.g. one that failed to restore) so the next create rebuilds it."""
        shutil.rmtree(template.directory, ignore_errors=True)
        _log.warning("template_discarded", key=template.key)

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
                # Running clones keep their backing file open; removal only drops the name.
                shutil.rmtree(directory, ignore_errors=True)
                _log.info("template_pruned", key=directory.name)
