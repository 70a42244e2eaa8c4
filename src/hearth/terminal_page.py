"""The terminal page's files: the page itself, shipped in the package, and xterm.js from npm.

``hearth/api/static/terminal/`` holds the page (``index.html``, ``terminal.js``,
``terminal.css``) and the manifests that pin its npm packages (``@xterm/xterm``,
``@xterm/addon-fit``: exact versions in ``package.json``, integrity in ``package-lock.json``).
``install`` runs ``npm ci`` for them under the cache dir (``hearth.npm``), as
``scripts/install.sh`` does through ``python -m hearth.terminal_page``; the controller serves the
installed packages at ``/xterm/`` and the page's own files at ``/static/terminal/``. Until they
are installed the page answers 503 naming that command.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hearth import npm
from hearth.errors import ToolMissing

PAGE_DIR = Path(__file__).resolve().parent / "api" / "static" / "terminal"
PAGE = "index.html"
PACKAGES = ("@xterm/xterm", "@xterm/addon-fit")


def install_command() -> str:
    """The command that installs xterm.js with this interpreter."""
    return f"{sys.executable} -m hearth.terminal_page"


def installed_dir(cache_dir: Path) -> Path:
    """Where the install for the shipped lockfile lives (whether or not it exists yet)."""
    return cache_dir / "terminal-page" / npm.lockfile_digest(PAGE_DIR)


def xterm_dir(cache_dir: Path) -> Path:
    """The directory served at ``/xterm/``: ``xterm/`` and ``addon-fit/`` once installed."""
    return installed_dir(cache_dir) / "node_modules" / "@xterm"


def is_installed(target: Path) -> bool:
    """Whether ``target`` holds every pinned package."""
    return all((target / "node_modules" / name / "package.json").is_file() for name in PACKAGES)


def require_installed(cache_dir: Path) -> None:
    """ToolMissing (503) naming the install command unless xterm.js is installed."""
    if not is_installed(installed_dir(cache_dir)):
        raise ToolMissing(
            f"the terminal page's xterm.js is not installed under {installed_dir(cache_dir)}: "
            f"run {install_command()}"
        )


def install(cache_dir: Path) -> Path:
    """``npm ci`` of the pinned packages unless already installed; the install's directory."""
    return npm.install_lockfile(
        PAGE_DIR,
        installed_dir(cache_dir),
        is_installed=is_installed,
        what="the terminal page's xterm.js",
        error=ToolMissing,
    )


if __name__ == "__main__":
    sys.exit(npm.install_command(install))
