"""A vendor login's private folder across a crash of its agent, on real agents: the agent that
starts next removes the folder the crashed one's login left, and keeps a live agent's.

Each agent runs as ``python3 -m hearth_agent`` (its logins root in the launcher's own TMPDIR: in
the shared ``/tmp`` an agent that another test starts meanwhile would remove the crashed one's
folder first, as it should), with a stand-in named ``codex`` first on its PATH (the scripted CLI of
``test_agent_vendor_login``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import AgentLauncher, AgentProcess
from tests.integration.test_agent_vendor_login import FAKE_CLI, alive, wait_for

URL = "https://login.example.test/authorize?state=login-dirs"


@pytest.fixture
def codex_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in named ``codex`` first on the PATH the agents are started with."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    codex = fake_bin / "codex"
    codex.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_CLI} child "{URL}"\n')
    codex.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")


def login_folder(agent: AgentProcess) -> Path:
    """Start a codex login on ``agent``; the private folder its CLI works in (its HOME's)."""
    with agent.client() as client:
        started = client.post("/login/start", json={"provider": "codex", "timeout_s": 300})
        assert started.status_code == 201, started.text
    cli: list[Path] = []

    def cli_running() -> bool:
        cli[:] = [
            entry
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and alive(int(entry.name)) and _parent(entry) == agent.pid
        ]
        return bool(cli)

    wait_for(cli_running, "the login's CLI")
    environ = (cli[0] / "environ").read_bytes().split(b"\0")
    home = next(item[5:] for item in environ if item.startswith(b"HOME="))
    return Path(home.decode()).parent


def _parent(entry: Path) -> int | None:
    try:
        return int((entry / "stat").read_bytes().rpartition(b")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.usefixtures("codex_stand_in")
def test_an_agent_started_after_a_crash_removes_the_login_folders_the_crashed_one_left(
    agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    def start() -> AgentProcess:
        return agent_launcher.start("--insecure-no-auth", "--run-dir", str(tmp_path / "run"))

    live = start()
    live_folder = login_folder(live)
    crashed = start()
    crashed_folder = login_folder(crashed)
    assert crashed_folder.is_dir()
    assert live_folder.is_dir()
    assert crashed_folder.parent.parent == agent_launcher.tmp / "hearth-logins"

    crashed.kill()  # SIGKILL, and its CLI's session: no cancel, no cleanup
    assert crashed.process.returncode == -signal.SIGKILL
    assert crashed_folder.is_dir(), "a crashed agent cannot remove its logins' folders"

    restarted = start()

    assert not crashed_folder.exists()
    assert live_folder.is_dir(), "a live agent's login keeps its folder"
    assert any(r["event"] == "left_over_login_dirs_removed" for r in restarted.log_records())
    assert live.stop() == 0  # its login cancelled, its folder removed
    assert not live_folder.exists()
    with contextlib.suppress(OSError):
        live_folder.parent.rmdir()  # the agent's own, now empty
