"""The vendor CLIs' logins: each one's command, scripted prompts, files and status check."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hearth_agent.providers import get_provider, merge_side_document


@dataclass(frozen=True)
class PromptStep:
    """One prompt of a login script: when ``expect`` is on the screen, type ``keys``."""

    name: str
    expect: str
    keys: str


@dataclass(frozen=True)
class VendorLogin:
    """How one vendor CLI logs in and reports its status."""

    provider: str
    command: tuple[str, ...]
    steps: tuple[PromptStep, ...] = ()
    # Texts that mean the CLI is waiting for the browser, not for the keyboard.
    waiting: tuple[str, ...] = ()
    # Texts that mean the login failed while the CLI keeps running.
    failures: tuple[str, ...] = ()
    # Files to write under the private home before the CLI starts: (home, workdir) → {path: JSON}.
    prepare: Callable[[Path, Path], Mapping[str, object]] = field(default=lambda home, work: {})
    # Extra environment for the CLI.
    env: Mapping[str, str] = field(default_factory=dict)
    # Directories the CLI expects under its (private) TMPDIR.
    tmp_dirs: tuple[str, ...] = ()
    status_command: tuple[str, ...] | None = None
    # Exit statuses that mean the CLI's runtime crashed (like a crash signal: worth a new start).
    crash_exits: tuple[int, ...] = ()
    # Whether the status command's output says "logged in" (given its exit code 0).
    logged_in: Callable[[str], bool] = field(default=lambda output: True)


def _side_files(provider: str, *paths: str) -> Callable[[Path, Path], Mapping[str, object]]:
    """``prepare`` writing ``provider``'s side files at ``paths`` (every one when none is named)
    for the login's own workdir: the screens a delivered login skips, a login skips too."""

    def prepare(home: Path, work: Path) -> Mapping[str, object]:
        return {
            side_file.path: merge_side_document(None, side_file.sets, workspace=str(work))
            for side_file in get_provider(provider).side_files
            if not paths or side_file.path in paths
        }

    return prepare


def _claude_logged_in(output: str) -> bool:
    try:
        status, _ = json.JSONDecoder().raw_decode(output[output.find("{") :])
    except ValueError:
        return False
    return isinstance(status, dict) and status.get("loggedIn") is True


VENDOR_LOGINS: dict[str, VendorLogin] = {
    login.provider: login
    for login in (
        VendorLogin(
            provider="codex",
            command=("codex", "login"),
            waiting=("Starting local login server",),
            status_command=("codex", "login", "status"),
            logged_in=lambda output: "Logged in" in output,
        ),
        VendorLogin(
            provider="claude_code",
            command=("claude", "auth", "login", "--claudeai"),
            waiting=("Paste code here if prompted",),
            prepare=_side_files("claude_code"),
            status_command=("claude", "auth", "status"),
            logged_in=_claude_logged_in,
        ),
        VendorLogin(
            provider="gemini_cli",
            command=("gemini",),
            steps=(
                # The auth dialog, "Sign in with Google" preselected.
                PromptStep("auth_method", "How would you like to authenticate", "\r"),
                # "Opening authentication page in your browser. Do you want to continue?" → Yes.
                PromptStep("browser_consent", "Do you want to continue?", "\r"),
            ),
            waiting=("Waiting for authentication",),
            failures=("Failed to sign in", "Failed to login"),
            # Only the folder trusted: the login is what picks the auth method.
            prepare=_side_files("gemini_cli", ".gemini/trustedFolders.json"),
            # Gemini otherwise re-runs itself in a second node process with a larger heap, which
            # a login does not need: one process less in the Browser VM's memory, and a CLI
            # killed by a signal shows as such (the relauncher turns that into exit status 1).
            env={"GEMINI_CLI_NO_RELAUNCH": "true"},
            # Where it looks for IDE companions; when missing, it prints a stack trace into its
            # own UI, after which its layout engine (yoga, WASM) was seen to abort the process.
            tmp_dirs=("gemini/ide",),
            # Node's 7: its fatal-exception handler failed, as when that WASM layout engine
            # aborts ("RuntimeError: Aborted()") under emulation before the URL is out.
            crash_exits=(7,),
        ),
    )
}


def vendor_login(provider: str) -> VendorLogin | None:
    """The vendor login of ``provider``, or None if it has none (oidc)."""
    return VENDOR_LOGINS.get(provider)


def default_search_path() -> str:
    """The agent's PATH with /usr/local/bin (where images put the vendor CLIs) in front."""
    parts = [p for p in (os.environ.get("PATH") or "/usr/bin:/bin").split(":") if p]
    return ":".join(["/usr/local/bin", *(p for p in parts if p != "/usr/local/bin")])
