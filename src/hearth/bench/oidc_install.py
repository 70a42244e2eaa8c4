"""The OAuth test server's runnable copy: its shipped sources plus ``npm ci`` under the cache dir.

The package ships ``oidc_server/`` (``server.mjs``, ``package.json``, ``package-lock.json``)
without ``node_modules``. ``install`` copies them to ``<cache dir>/oidc-server/<lockfile
sha256>/`` and runs ``npm ci`` there (``hearth.npm``), the only step that needs the npm registry;
node then resolves ``oidc-provider`` from that copy's own ``node_modules``. ``ready_dir``
refreshes the copy's ``server.mjs`` from the package, which the lockfile's digest does not cover.
Run ``python -m hearth.bench.oidc_install`` to install ahead of time.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hearth import npm
from hearth.bench.errors import BenchError

SOURCE_DIR = Path(__file__).resolve().parent / "oidc_server"
SERVER_SCRIPT = "server.mjs"
MANIFESTS = npm.MANIFESTS


def install_command() -> str:
    """The command that installs the server's dependencies with this interpreter."""
    return f"{sys.executable} -m hearth.bench.oidc_install"


def lockfile_digest() -> str:
    """The sha256 of the shipped ``package-lock.json``: what names an install."""
    return npm.lockfile_digest(SOURCE_DIR)


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
    return npm.install_lockfile(
        SOURCE_DIR,
        target,
        is_installed=is_installed,
        what="the OAuth test server's dependencies",
        error=BenchError,
        extra_files=(SERVER_SCRIPT,),
    )


def _refresh_script(target: Path) -> None:
    script = (SOURCE_DIR / SERVER_SCRIPT).read_bytes()
    if (target / SERVER_SCRIPT).read_bytes() == script:
        return
    fd, temporary = tempfile.mkstemp(prefix=".server-", suffix=".mjs", dir=target)
    with os.fdopen(fd, "wb") as sink:
        sink.write(script)
    os.chmod(temporary, 0o644)  # as shutil.copyfile would have made it, not mkstemp's 0600
    os.replace(temporary, target / SERVER_SCRIPT)


if __name__ == "__main__":
    sys.exit(npm.install_command(install))
