"""Debian root filesystems made by debootstrap, cached by what went into them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hearth.images.recipes import Recipe
from hearth.images.staging import staged_dir
from hearth.tools import run_tool

# Bump when the way a rootfs is prepared changes, so cached trees are rebuilt.
ROOTFS_FORMAT = 1
_DEBOOTSTRAP_TIMEOUT_S = 1800


def rootfs_key(recipe: Recipe, *, suite: str, mirror: str) -> str:
    """The cache key of a recipe's debootstrap tree."""
    material = {
        "format": ROOTFS_FORMAT,
        "suite": suite,
        "variant": "minbase",
        "packages": list(recipe.all_packages),
        "mirror": mirror,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def ensure_rootfs(recipe: Recipe, *, cache_dir: Path, suite: str, mirror: str) -> Path:
    """A debootstrap'd tree for ``recipe`` under ``cache_dir/rootfs/``, built once."""
    target = (
        cache_dir / "rootfs" / f"{recipe.name}-{rootfs_key(recipe, suite=suite, mirror=mirror)}"
    )
    if (target / "COMPLETE").exists():
        return target / "root"
    with staged_dir(target, prefix=f".{recipe.name}-") as staging:
        root = staging / "root"
        run_tool(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(recipe.all_packages)}",
                suite,
                root,
                mirror,
            ],
            what=f"debootstrap {recipe.name}",
            timeout=_DEBOOTSTRAP_TIMEOUT_S,
        )
        _trim(root)
        (root / "etc/hostname").write_text("hearth-vm\n")
        (staging / "COMPLETE").write_text(json.dumps({"packages": list(recipe.all_packages)}))
    return target / "root"


def _trim(root: Path) -> None:
    """Drop downloaded packages and apt lists: they only make every image larger."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
        for path in root.glob(pattern):
            path.unlink()
