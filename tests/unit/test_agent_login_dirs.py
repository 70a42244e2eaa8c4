"""The logins root, with real processes as agents: an agent's folder is named by its pid and
start time, and an agent that starts removes only the folders of agents that are gone."""

from __future__ import annotations

import io
import os
from pathlib import Path

from hearth_agent.exec_records import ProcessIdentity
from hearth_agent.log import JsonLogger
from hearth_agent.login_dirs import agent_dir_name, owned_work_root
from tests.unit.test_agent_exec_records import Sessions, dead_agent, sessions  # noqa: F401 (a fixture)


def folder_of(root: Path, owner: ProcessIdentity) -> Path:
    """``owner``'s folder with a login's private folder in it, as its logins leave it."""
    login = root / agent_dir_name(owner) / "login-codex-abc" / "home"
    login.mkdir(parents=True)
    (login / "auth.json").write_text("{}")
    return root / agent_dir_name(owner)


def test_an_agent_removes_the_folders_of_agents_that_are_gone_and_keeps_the_rest(
    tmp_path: Path,
    sessions: Sessions,  # noqa: F811 (the fixture, imported above)
) -> None:
    agent = ProcessIdentity.of(sessions.lead("exec sleep 60").pid)
    assert agent is not None
    root = tmp_path / "hearth-logins"
    crashed = folder_of(root, dead_agent(sessions))
    live = folder_of(root, agent)
    # A pid reused since: the same pid as the live agent, another start.
    reused = folder_of(root, ProcessIdentity(agent.pid, agent.start_ticks - 1))
    others = [root / "login-codex-old", root / "agent-notes"]
    for other in others:
        other.mkdir()
    (root / "agent-1-1").symlink_to(tmp_path)
    logs = io.StringIO()

    work_root = owned_work_root(JsonLogger(stream=logs), root=root)

    me = ProcessIdentity.of(os.getpid())
    assert me is not None
    assert work_root == root / agent_dir_name(me)
    assert not crashed.exists()
    assert not reused.exists()
    assert live.is_dir()
    assert all(other.is_dir() for other in others)
    assert (root / "agent-1-1").is_symlink()
    assert '"left_over_login_dirs_removed"' in logs.getvalue()
    assert '"folders": 2' in logs.getvalue()


def test_the_logins_root_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "hearth-logins"
    owned_work_root(JsonLogger(stream=io.StringIO()), root=root)
    assert root.stat().st_mode & 0o777 == 0o700
