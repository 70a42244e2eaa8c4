"""A vendor CLI's own offline status check of the credentials in the agent's home."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hearth_agent.providers import CredentialFormat
from hearth_agent.vendor_catalog import default_search_path, vendor_login
from hearth_agent.vendor_script import redact

STATUS_TIMEOUT_S = 120.0
_MAX_OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class StatusReport:
    """What a vendor CLI says about the credentials in the agent's home."""

    provider: str
    command: str | None
    exit_code: int | None
    logged_in: bool | None
    stdout: str
    stderr: str
    reason: str | None = None

    @classmethod
    def unchecked(cls, provider: str, command: str | None, reason: str) -> StatusReport:
        """A report of a check that could not run, saying why."""
        return cls(
            provider=provider,
            command=command,
            exit_code=None,
            logged_in=None,
            stdout="",
            stderr="",
            reason=reason,
        )

    def as_json(self) -> dict[str, object]:
        """The response body of ``GET /credentials/{provider}/status``."""
        return {
            "provider": self.provider,
            "command": self.command,
            "exit_code": self.exit_code,
            "logged_in": self.logged_in,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "reason": self.reason,
        }


def cli_status(
    provider: CredentialFormat, *, home: Path, search_path: str | None = None
) -> StatusReport:
    """Run the provider's own offline status command against ``home``'s credentials."""
    login = vendor_login(provider.name)
    command = None if login is None else login.status_command
    if command is None:
        return StatusReport.unchecked(
            provider.name, None, f"{provider.name} has no offline status command; check the files"
        )
    path = search_path if search_path is not None else default_search_path()
    shown = " ".join(command)
    if shutil.which(command[0], path=path) is None:
        return StatusReport.unchecked(
            provider.name, shown, f"the {command[0]!r} command is not installed in this VM"
        )
    env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1"}
    try:
        completed = subprocess.run(
            list(command),
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=STATUS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return StatusReport.unchecked(
            provider.name, shown, f"{shown} did not answer within {STATUS_TIMEOUT_S:g} s"
        )
    stdout = completed.stdout.decode("utf-8", "replace")
    stderr = completed.stderr.decode("utf-8", "replace")
    # codex says "Logged in using ChatGPT" on stderr, claude prints its JSON on stdout.
    said = stdout + stderr
    logged_in = completed.returncode == 0 and login is not None and login.logged_in(said)
    return StatusReport(
        provider=provider.name,
        command=shown,
        exit_code=completed.returncode,
        logged_in=logged_in,
        stdout=redact(stdout)[-_MAX_OUTPUT_CHARS:],
        stderr=redact(stderr)[-_MAX_OUTPUT_CHARS:],
    )
