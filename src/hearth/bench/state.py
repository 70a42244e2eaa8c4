"""A benchmark's scratch controller state dir: the images it serves, and that nothing is left."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hearth.bench.errors import BenchError
from hearth.bench.processes import kill_leftover_qemu
from hearth.images.manifest import ImageDir


def link_images(state: Path, images: Mapping[str, ImageDir]) -> None:
    """Point the controller's image dirs (``cli``, ``browser``) at the chosen images."""
    directory = state / "images"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, image in images.items():
        link = directory / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(image.path.absolute(), target_is_directory=True)


def check_nothing_left(state: Path) -> None:
    """Raise BenchError (after killing them) if QEMU processes or VM dirs are left."""
    problems = []
    killed = kill_leftover_qemu(state)
    if killed:
        problems.append(f"QEMU processes still running (killed): {killed}")
    vms = state / "vms"
    if vms.is_dir() and any(vms.iterdir()):
        problems.append(f"work directories left in {vms}")
    if problems:
        raise BenchError("the bench left resources behind: " + "; ".join(problems))
