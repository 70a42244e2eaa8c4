"""Where vendor logins work: a folder per agent, so that an agent started after a crash removes
what a dead agent's logins left.

Each vendor login works in a private folder (its CLI's home, a temporary directory) that the
login removes when it ends; a crashed agent's logins never end, and their folders would stay
until the VM does. So each agent's logins work in ``<root>/agent-<pid>-<start ticks>`` (the
logins root, ``hearth-logins`` in the temporary directory, 0700), and an agent that starts removes
every such folder whose agent is gone, as ``exec_records`` decides a record is stale: by the
agent's pid and start time (``/proc/PID/stat``), so that a pid reused since names no owner. A
folder whose agent still runs (two agents sharing the root) is left alone, as is anything else
in the root.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from hearth_agent.exec_records import ProcessIdentity
from hearth_agent.log import JsonLogger

ROOT_NAME = "hearth-logins"
_AGENT_DIR = re.compile(r"agent-([1-9][0-9]*)-([0-9]+)")


def agent_dir_name(owner: ProcessIdentity) -> str:
    """The name of ``owner``'s folder under the logins root."""
    return f"agent-{owner.pid}-{owner.start_ticks}"


def owned_work_root(
    logger: JsonLogger, *, root: Path | None = None, owner: ProcessIdentity | None = None
) -> Path:
    """The folder this agent's (``owner``'s) logins work in, under ``root`` (default: the logins
    root), once the folders of agents that are gone are removed from it. Made by the first
    login (a failure to make it is that login's)."""
    root = root if root is not None else Path(tempfile.gettempdir()) / ROOT_NAME
    owner = owner if owner is not None else ProcessIdentity.of(os.getpid())
    if owner is None:  # no /proc: no agent can be told alive or gone
        return root / f"agent-{os.getpid()}-0"
    remove_left_over(root, owner=owner, logger=logger)
    return root / agent_dir_name(owner)


def remove_left_over(root: Path, *, owner: ProcessIdentity, logger: JsonLogger) -> int:
    """Remove the folders under ``root`` of agents that are gone (``owner``'s own and a live
    agent's are kept); how many were removed."""
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        entries = list(os.scandir(root))
    except OSError as exc:
        logger.warning("login_dirs_unreadable", path=str(root), reason=exc.strerror)
        return 0
    removed = 0
    for entry in entries:
        named = _AGENT_DIR.fullmatch(entry.name)
        if named is None or not entry.is_dir(follow_symlinks=False):
            continue
        agent = ProcessIdentity(int(named[1]), int(named[2]))
        if agent == owner or agent.alive():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    if removed:
        logger.warning("left_over_login_dirs_removed", folders=removed)
    return removed
