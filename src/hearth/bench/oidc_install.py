"""The OAuth test server's runnable copy: its shipped sources plus ``npm ci`` under the cache dir.

The package ships ``oidc_server/`` (``server.mjs``, ``package.json``, ``package-lock.json``)
without ``node_modules``. ``install`` copies them to ``<cache dir>/oidc-server/<lockfile
sha256>/`` and runs ``npm ci`` there, the only step that needs the npm registry; node then
resolves ``oidc-provider`` from that copy's own ``node_modules``. An install is built in a scratch
directory and renamed into place, so a concurrent reader sees nothing or a complete install.
``ready_dir`` refreshes the copy's ``server.mjs`` from the package, which the lockfile's digest
does not cover. Run ``python -m hearth.bench.oidc_install`` to install ahead of time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hearth.bench.errors import BenchError
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.tools import run_tool

SOURCE_DIR = Path(__file__).resolve().parent / "oidc_server"
SERVER_SCRIPT = "server.mjs"
MANIFESTS = ("package.json", "package-lock.json")
INSTALL_TIMEOUT_S = 600.0


def install_command() -> str:
    """The command that installs the server's dependencies with this interpreter."""
    return f"{sys.executable} -m hearth.bench.oidc_install"


def lockfile_digest() -> str:
    """The sha256 of the shipped ``package-lock.json``: what names an install."""
    return hashlib.sha256((SOURCE_DIR / "package-lock.json").read_bytes()).hexdigest()


def installed_dir(cache_dir: Path) -> Path:
    """Where the install for the shipped lockfile lives (whether or not it exists yet)."""
    return cache_dir / "oidc-server" / lockfile_digest()


def is_installed(server_dir: Path) -> bool:
    """Whether ``server_dir`` holds a server script and its ``oidc-provider`` dependency."""
    return (server_dir / SERVER_SCRIPT).is_file() and (
        server_dir / "node_modules" / "oidc-provider"
    ).is_dir()


def ready_dir(cache_dir: Path) -> Path:
    """The installed server, its script refreshed; ``BenchError`` naming the command if absent."""
    target = installed_dir(cache_dir)
    if not is_installed(target):
        raise BenchError(
            f"the OAuth test server's dependencies are not installed under {target}: "
            f"run {install_command()}"
        )
    _refresh_script(target)
    return target


def install(cache_dir: Path) -> Path:
    """Install the server's dependencies with ``npm ci`` unless already there; the directory."""
    target = installed_dir(cache_dir)
    if is_installed(target):
        _refresh_script(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        for name in (*MANIFESTS, SERVER_SCRIPT):
            shutil.copyfile(SOURCE_DIR / name, scratch / name)
        run_tool(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            what="npm ci (the OAuth test server's dependencies)",
            error=BenchError,
            timeout=INSTALL_TIMEOUT_S,
            cwd=scratch,
        )
        try:
            scratch.rename(target)
        except OSError:
            if not is_installed(target):  # not a concurrent install that finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _refresh_script(target: Path) -> None:
    script = (SOURCE_DIR / SERVER_SCRIPT).read_bytes()
    if (target / SERVER_SCRIPT).read_bytes() == script:
        return
    fd, temporary = tempfile.mkstemp(prefix=".server-", suffix=".mjs", dir=target)
    with os.fdopen(fd, "wb") as sink:
        sink.write(script)
    os.chmod(temporary, 0o644)  # as shutil.copyfile would have made it, not mkstemp's 0600
    os.replace(temporary, target / SERVER_SCRIPT)


def main() -> int:
    """Install into ``HEARTH_CACHE_DIR`` (default /var/cache/hearth) and print the directory."""
    try:
        print(install(Settings.from_env().cache_dir))
    except (HearthError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
