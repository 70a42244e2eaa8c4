"""Firecracker snapshot templates: one booted, healthy, paused VM per (image, size), saved once.

A template directory holds ``disk.ext4`` (the template VM's root disk, frozen read-only; clones
layer their own copy-on-write disk on it), ``vmstate`` and ``memory`` (the full snapshot;
clones map the memory file MAP_PRIVATE, so it must never change), and ``template.json`` (what
produced it: Firecracker version and the VM config it reported). The key covers everything a
clone must share with its template: image files, VM size, kernel command line, guest network
identity and the Firecracker binary (snapshots are tied to its version).
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
from typing import Any

from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.vm.types import VmSpec

TEMPLATE_FORMAT = 1
FROZEN_FILES = ("disk.ext4", "vmstate", "memory")
_log = get_logger("vm.firecracker.templates")

# Builds a template into the given directory and returns metadata for template.json.
TemplateBuilder = Callable[[Path], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class FcTemplate:
    """A saved template ready to be restored."""

    key: str
    directory: Path

    @property
    def disk(self) -> Path:
        """The frozen root disk clones are layered on."""
        return self.directory / "disk.ext4"

    @property
    def vmstate(self) -> Path:
        """The microVM state file."""
        return self.directory / "vmstate"

    @property
    def memory(self) -> Path:
        """The guest memory file."""
        return self.directory / "memory"


def _identity(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns]


def template_key(
    image: ImageDir,
    spec: VmSpec,
    *,
    firecracker: str,
    boot_args: str,
    guest_identity: tuple[str, str, str, int],
    use_initrd: bool,
) -> str:
    """Identifies a template; any change a clone could notice gives a new key."""
    manifest = image.manifest
    files = [image.rootfs, image.vmlinux, *([image.initramfs] if use_initrd else [])]
    material = {
        "format": TEMPLATE_FORMAT,
        "content_hash": manifest.content_hash if manifest else None,
        "files": [_identity(p) for p in files],
        "firecracker": _identity(Path(firecracker)),
        "size": spec.size_key,
        "boot_args": boot_args,
        "guest": list(guest_identity),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


class FcTemplateStore:
    """Templates under one root, each built at most once per key (across processes too)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def lookup(self, key: str) -> FcTemplate | None:
        """The complete template for ``key``, if there is one."""
        template = FcTemplate(key, self.root / key)
        complete = (template.directory / "COMPLETE").exists()
        if complete and all((template.directory / name).exists() for name in FROZEN_FILES):
            return template
        return None

    async def ensure(
        self, key: str, *, origin: str, build: TemplateBuilder
    ) -> tuple[FcTemplate, bool]:
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
                    return await self._build(key, origin=origin, build=build), True
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    async def _build(self, key: str, *, origin: str, build: TemplateBuilder) -> FcTemplate:
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}-"))
        started = time.monotonic()
        try:
            meta = await build(staging)
            for name in FROZEN_FILES:
                (staging / name).chmod(0o444)
            (staging / "template.json").write_text(
                json.dumps({"key": key, "origin": origin, "built_at": time.time(), **meta})
            )
            (staging / "COMPLETE").write_text("")
            staging.rename(self.root / key)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _log.info("template_built", key=key, duration_s=round(time.monotonic() - started, 2))
        self._prune(keep=key, origin=origin)
        return FcTemplate(key, self.root / key)

    def _prune(self, *, keep: str, origin: str) -> None:
        """Remove older templates of the same origin; running clones keep their files open."""
        for directory in self.root.iterdir():
            if directory.name == keep or not (directory / "template.json").exists():
                continue
            try:
                meta = json.loads((directory / "template.json").read_text())
            except (OSError, ValueError):
                continue
            if meta.get("origin") == origin:
                shutil.rmtree(directory, ignore_errors=True)
                _log.info("template_pruned", key=directory.name)
