"""Pinned npm packages installed under the cache dir: one ``npm ci`` per shipped lockfile.

Whatever Hearth takes from npm at run time (the test OAuth server's ``oidc-provider``, the
terminal page's xterm.js) ships as a directory holding ``package.json`` and
``package-lock.json`` with exact versions, never ``node_modules``. ``install_lockfile`` copies
them to ``<cache dir>/<name>/<lockfile sha256>/`` and runs ``npm ci`` there, the only step that
needs the npm registry. An install is built in a scratch directory and renamed into place, so a
concurrent reader sees nothing or a complete install, and a changed lockfile gets a new one.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.tools import run_tool

MANIFESTS = ("package.json", "package-lock.json")
INSTALL_TIMEOUT_S = 600.0


def lockfile_digest(source: Path) -> str:
    """The sha256 of ``source``'s ``package-lock.json``: what names its install."""
    return hashlib.sha256((source / "package-lock.json").read_bytes()).hexdigest()


def install_lockfile(
    source: Path,
    target: Path,
    *,
    is_installed: Callable[[Path], bool],
    what: str,
    error: type[HearthError],
    extra_files: Sequence[str] = (),
    timeout_s: float = INSTALL_TIMEOUT_S,
) -> Path:
    """``npm ci`` of ``source``'s manifests (and ``extra_files``) into ``target``, unless
    ``is_installed(target)`` already; ``target``. ``error`` (naming ``what``) if npm fails."""
    if is_installed(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        for name in (*MANIFESTS, *extra_files):
            shutil.copyfile(source / name, scratch / name)
        run_tool(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            what=f"npm ci ({what})",
            error=error,
            timeout=timeout_s,
            cwd=scratch,
        )
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide the install from other users
        try:
            scratch.rename(target)
        except OSError:
            if not is_installed(target):  # not a concurrent install that finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def install_command(install: Callable[[Path], Path]) -> int:
    """``python -m …`` of an installer: install into ``HEARTH_CACHE_DIR`` (default
    /var/cache/hearth) and print the directory; 1 with the error on stderr."""
    try:
        print(install(Settings.from_env().cache_dir))
    except (HearthError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
