"""``hearth image build``: rootfs, kernel, initramfs and agent into one cached image directory.

Phases, each cached by what goes into it: debootstrap tree (per recipe, packages, suite, mirror),
guest kernel (per package version), initramfs (reproducible bytes), ext4 image with the agent
installed (per all of those plus the agent payload). A build whose inputs did not change only
links the cached files into the output directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from hearth.config import Settings
from hearth.errors import BuildFailed, ImageVerifyFailed
from hearth.images.agent_install import verify_image
from hearth.images.ext4 import Ext4Image
from hearth.images.initramfs import build_initramfs
from hearth.images.kernel import fetch_kernel
from hearth.images.layout import build_payload, payload_edits
from hearth.images.locks import exclusive_image_dir
from hearth.images.manifest import (
    INITRAMFS_NAME,
    KERNEL_NAME,
    ROOTFS_NAME,
    VMLINUX_NAME,
    ImageDir,
    ImageManifest,
)
from hearth.images.recipes import Recipe
from hearth.images.rootfs import ensure_rootfs, rootfs_key
from hearth.images.staging import exclusive_builds, staged_dir
from hearth.images.vendor import (
    ensure_vendor_tree,
    merge_trees,
    system_settings_key,
    vendor_key,
    write_system_settings,
)
from hearth.progress import Progress
from hearth.tools import run_tool

IMAGE_FORMAT = 1
# Older builds of a recipe kept in the cache (besides the newest), for quick switches back.
_CACHED_IMAGES_KEPT = 2
# The cache dir's parts that builds stage directories in (kernel, rootfs, vendor, images).
_STAGED_PARTS = ("kernel", "rootfs", "vendor", "images")


def default_output_dir(settings: Settings, recipe: Recipe) -> Path:
    """Where ``hearth image build`` puts a recipe's image unless ``--out`` says otherwise."""
    return settings.state_dir / "images" / recipe.name


def build_image(
    recipe: Recipe, *, settings: Settings, out_dir: Path, progress: Progress
) -> tuple[ImageManifest, bool]:
    """Build (or reuse) ``recipe``'s image into ``out_dir``; returns (manifest, was it cached).

    Builds sharing a cache dir run one at a time: two at once would each replace the caches
    (kernel, rootfs tree, image) the other is reading. The second then reuses what the first
    made."""
    mirror = settings.resolve_debian_mirror()
    cache = settings.cache_dir

    def waiting() -> None:
        progress.note(
            f"another image build is running on {cache}; waiting for it to end "
            "(what it builds is then reused)"
        )

    try:
        with exclusive_builds(
            cache, staging_parents=[cache / part for part in _STAGED_PARTS], on_wait=waiting
        ):
            return _build_or_reuse(
                recipe, settings=settings, mirror=mirror, out_dir=out_dir, progress=progress
            )
    except OSError as exc:  # what was staged is gone already; say what to do
        where = f" ({exc.filename})" if exc.filename else ""
        then = (
            f"free space in {cache} and {out_dir.parent}, then"
            if exc.errno == errno.ENOSPC
            else "once that is fixed,"
        )
        raise BuildFailed(
            f"image build failed: {exc.strerror or exc}{where}; {then} run "
            f"hearth image build --recipe {recipe.name} again"
        ) from exc


def _build_or_reuse(
    recipe: Recipe, *, settings: Settings, mirror: str, out_dir: Path, progress: Progress
) -> tuple[ImageManifest, bool]:
    payload = build_payload()
    with progress.phase("kernel", "(linux-image-cloud-amd64)"):
        kernel = fetch_kernel(settings.cache_dir)
    fd, name = tempfile.mkstemp(prefix="hearth-initramfs-")
    os.close(fd)  # build_initramfs writes it by its path
    initramfs_tmp = Path(name)
    try:
        with progress.phase("initramfs"):
            initramfs_sha = build_initramfs(kernel.modules_dir, initramfs_tmp)
        inputs = {
            "format": IMAGE_FORMAT,
            "recipe": recipe.name,
            "disk_mib": recipe.disk_mib,
            "rootfs": rootfs_key(recipe, suite=settings.debian_suite, mirror=mirror),
            "kernel": f"{kernel.package}_{kernel.version}",
            "initramfs": initramfs_sha,
            "agent": payload.digest,
        }
        if recipe.vendor_clis:
            inputs["vendor"] = vendor_key()
            inputs["vendor_settings"] = system_settings_key()
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        content_hash = digest[:20]
        cached = settings.cache_dir / "images" / f"{recipe.name}-{content_hash}"
        existing = ImageDir(out_dir).manifest
        if existing and existing.content_hash == content_hash and existing.files_present(out_dir):
            progress.note(f"{out_dir} is up to date (content hash {content_hash})")
            return existing, True
        manifest = ImageDir(cached).manifest
        was_cached = manifest is not None and manifest.files_present(cached)
        if not was_cached:
            _prune_cache(cached.parent, recipe.name, keep=_CACHED_IMAGES_KEPT - 1)
            manifest = _build_into(
                recipe,
                cached,
                settings=settings,
                mirror=mirror,
                kernel_dir=kernel.directory,
                initramfs=initramfs_tmp,
                content_hash=content_hash,
                kernel_package=kernel.package,
                kernel_version=kernel.version,
                progress=progress,
            )
        assert manifest is not None
        with progress.phase("publish", str(out_dir)):
            _publish(cached, out_dir)
        return manifest, was_cached
    finally:
        initramfs_tmp.unlink(missing_ok=True)


def _build_into(
    recipe: Recipe,
    target: Path,
    *,
    settings: Settings,
    mirror: str,
    kernel_dir: Path,
    initramfs: Path,
    content_hash: str,
    kernel_package: str,
    kernel_version: str,
    progress: Progress,
) -> ImageManifest:
    with staged_dir(target, prefix=f".{recipe.name}-") as staging:
        with progress.phase(
            "rootfs", f"(debootstrap {recipe.name}: {len(recipe.all_packages)} packages)"
        ):
            tree = ensure_rootfs(
                recipe, cache_dir=settings.cache_dir, suite=settings.debian_suite, mirror=mirror
            )
        merged: Path | None = None
        if recipe.vendor_clis:
            with progress.phase("vendor", "(npm ci: codex, claude, gemini, node)"):
                vendor_tree = ensure_vendor_tree(settings.cache_dir)
                merged = staging / "merged"
                merged.mkdir()
                merge_trees(tree, vendor_tree, merged)
                write_system_settings(merged)
                tree = merged
        rootfs = staging / ROOTFS_NAME
        with progress.phase("ext4", f"({recipe.disk_mib} MiB, mkfs.ext4 -d)"):
            run_tool(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-L",
                    "hearth",
                    "-d",
                    tree,
                    rootfs,
                    f"{recipe.disk_mib}M",
                ],
                what="mkfs.ext4",
                timeout=900,
            )
        if merged is not None:
            shutil.rmtree(merged)
        with progress.phase("agent", "(install + verify)"):
            payload = build_payload()
            Ext4Image(rootfs).apply(payload_edits(payload))
            report = verify_image(rootfs, payload)
            if not report.ok:
                raise ImageVerifyFailed(
                    f"built image failed verification: {'; '.join(report.problems)}",
                    missing=report.problems,
                )
        shutil.copyfile(kernel_dir / "vmlinuz", staging / KERNEL_NAME)
        shutil.copyfile(kernel_dir / "vmlinux", staging / VMLINUX_NAME)
        shutil.copyfile(initramfs, staging / INITRAMFS_NAME)
        names = (ROOTFS_NAME, KERNEL_NAME, VMLINUX_NAME, INITRAMFS_NAME)
        manifest = ImageManifest(
            recipe=recipe.name,
            agent_version=payload.version,
            content_hash=content_hash,
            suite=settings.debian_suite,
            packages=list(recipe.all_packages),
            kernel_package=kernel_package,
            kernel_version=kernel_version,
            disk_mib=recipe.disk_mib,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            sizes={name: (staging / name).stat().st_size for name in names},
        )
        manifest.write(staging)
    return manifest


def _prune_cache(directory: Path, recipe: str, *, keep: int) -> None:
    """Remove all but the ``keep`` newest cached builds of ``recipe``."""
    if not directory.is_dir():
        return
    builds = sorted(
        (p for p in directory.glob(f"{recipe}-*") if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _publish(cached: Path, out_dir: Path) -> None:
    """Hard-link (or sparse-copy) the cached image files into ``out_dir``, manifest last, while
    no edit or rollback of the image there runs (one that started first ends first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in sorted(cached.iterdir()) if p.name != "manifest.json"]
    with exclusive_image_dir(out_dir):
        for name in [*names, "manifest.json"]:
            source, dest = cached / name, out_dir / name
            tmp = out_dir / f".{name}.publish"
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError:
                run_tool(
                    ["cp", "--sparse=always", source, tmp], what=f"copy {name}", error=BuildFailed
                )
            tmp.replace(dest)
