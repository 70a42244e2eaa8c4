"""Live agent updates for real: an install root holding a copy of the agent, a respawn loop that
imitates hearth-init, and the bundles the controller would push.

``install_root`` is ``ROOT/hearth_agent`` copied from ``src/hearth_agent`` (so a test may swap
and roll back without touching the checkout); ``supervised_agent`` runs ``python -m hearth_agent
--updates ROOT`` under ``sh -c 'while :; do ...; sleep 0.5; done'`` in a session of its own. Its
teardown kills the guard (by the PID in ``update.lock``) and then the loop's process group (by the
loop's PID), and proves that no process naming ROOT is left.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.agent_bundle import AgentBundle
from hearth.agent_bundle import stamped as stamped_init
from hearth.images.layout import agent_sources
from hearth.vm.host import free_local_port
from hearth_agent import __version__ as RUNNING_VERSION
from hearth_agent.processes import live_args
from hearth_agent.update import DEADLINE_HEADER, SHA256_HEADER, VERSION_HEADER
from tests.integration.conftest import new_token

START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0
# The loop's own half second, a cold interpreter, and the guard's poll: what an update may take
# beyond its deadline before the test calls it a failure.
RESTART_SLACK_S = 10.0

__all__ = ["install_root", "supervised_agent"]  # the fixtures `import *` brings in


def agent_files() -> dict[str, bytes]:
    """The agent's sources by file name, as the controller bundles them."""
    return agent_sources()


def stamped(files: Mapping[str, bytes], version: str) -> dict[str, bytes]:
    """``files`` with ``__init__.py`` declaring ``__version__ = version``."""
    return {**files, "__init__.py": stamped_init(files["__init__.py"], version)}


def tar_gz(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A gzip'd tar of the given members (data for regular files, None for the others)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file member."""
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def bundle(files: Mapping[str, bytes]) -> bytes:
    """The bundle the controller pushes: ``hearth_agent/<name>`` for each file."""
    return AgentBundle.build(files=files).data


def push(
    client: httpx.Client,
    body: bytes,
    *,
    version: str,
    sha256: str | None = None,
    deadline_s: float | None = None,
) -> httpx.Response:
    """``POST /agent/update`` with the contract's headers (the body's own sha256 unless given)."""
    headers = {
        "Content-Type": "application/gzip",
        VERSION_HEADER: version,
        SHA256_HEADER: sha256 if sha256 is not None else hashlib.sha256(body).hexdigest(),
    }
    if deadline_s is not None:
        headers[DEADLINE_HEADER] = f"{deadline_s:g}"
    return client.post("/agent/update", content=body, headers=headers, timeout=30.0)


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with what it is: a file's sha256, a symlink's target, or dir."""
    listing: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            listing[relative] = "-> " + os.readlink(path)
        elif path.is_dir():
            listing[relative] = "dir"
        else:
            listing[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def processes_naming(root: Path) -> list[tuple[int, list[str]]]:
    """Live processes whose command line names ``root`` (agents and guards of this root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = live_args(int(entry.name))
            if args and any(str(root) in arg for arg in args):
                found.append((int(entry.name), args))
    return found


def wait_until(
    condition: Callable[[], Any], deadline_s: float, what: str, log: Callable[[], str] = str
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` (and quoting
    ``log()``) otherwise."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {deadline_s:g} s\n{log()}")
        time.sleep(0.05)


@dataclass
class SupervisedAgent:
    """An agent with ``--updates ROOT`` kept running by a respawn loop, as hearth-init does."""

    root: Path
    port: int
    token: str
    log_path: Path
    loop: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        """An httpx client sending the agent's token."""
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10.0
        )

    def health(self) -> dict[str, Any] | None:
        """What ``/health`` answers now, or None if nothing does."""
        try:
            response = httpx.get(f"{self.base_url}/health", timeout=1.0)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_for_version(self, version: str, deadline_s: float) -> dict[str, Any]:
        """Wait until ``/health`` answers ``status: ok`` with ``version``; its answer."""

        def healthy() -> dict[str, Any] | None:
            health = self.health()
            if health is None or (health["status"], health["version"]) != ("ok", version):
                return None
            return health

        answer: dict[str, Any] = wait_until(
            healthy, deadline_s, f"/health answering version {version}", self.log_text
        )
        return answer

    def update_result(self) -> dict[str, Any] | None:
        """The ``update`` field of ``GET /version``; None also while no agent answers."""
        try:
            with self.client() as client:
                response = client.get("/version", timeout=2.0)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        result: dict[str, Any] | None = response.json()["update"]
        return result

    def wait_for_result(self, deadline_s: float = RESTART_SLACK_S) -> dict[str, Any]:
        """Wait until the guard recorded its outcome (``ok`` no longer None); the result."""

        def settled() -> dict[str, Any] | None:
            result = self.update_result()
            return result if result is not None and result["ok"] is not None else None

        result: dict[str, Any] = wait_until(
            settled, deadline_s, "the update's result", self.log_text
        )
        return result

    def guard_pid(self) -> int | None:
        """The PID in ``update.lock`` while that guard lives."""
        try:
            lock = json.loads((self.root / "update.lock").read_bytes())
        except (OSError, ValueError):
            return None
        pid = lock.get("pid")
        return pid if isinstance(pid, int) and live_args(pid) is not None else None

    def log_text(self) -> str:
        """What the loop's agents (and guards) wrote so far."""
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill the guard, then the loop's process group, by PID; prove nothing of ROOT lives."""
        guard = self.guard_pid()
        if guard is not None:
            os.kill(guard, signal.SIGKILL)
        if self.loop.poll() is None:
            os.killpg(self.loop.pid, signal.SIGKILL)
        self.loop.wait(timeout=STOP_DEADLINE_S)
        deadline = time.monotonic() + STOP_DEADLINE_S
        while (left := processes_naming(self.root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes left behind: {left}"


@pytest.fixture
def install_root(tmp_path: Path) -> Path:
    """``ROOT`` with ``ROOT/hearth_agent`` a copy of the agent's sources (a real directory)."""
    root = tmp_path / "install"
    (root / "hearth_agent").mkdir(parents=True)
    for name, data in agent_files().items():
        (root / "hearth_agent" / name).write_bytes(data)
    return root


@pytest.fixture
def supervised_agent(tmp_path: Path, install_root: Path) -> Iterator[SupervisedAgent]:
    """A healthy agent with ``--updates ROOT`` under a respawn loop; torn down by PID."""
    token = new_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_local_port()
    # -S: the agent must run on the bare standard library, as on the guest's python3.
    agent = shlex.join(
        [
            sys.executable, "-S", "-m", "hearth_agent",
            "--listen", f"127.0.0.1:{port}",
            "--home", str(tmp_path / "home"),
            "--token-file", str(token_file),
            "--no-reseed",
            "--updates", str(install_root),
        ]
    )  # fmt: skip
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        loop = subprocess.Popen(
            ["sh", "-c", f"while :; do {agent}; sleep 0.5; done"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=tmp_path,
            env={
                "PATH": os.environ.get("PATH", ""),
                "PYTHONPATH": str(install_root),
                "PYTHONDONTWRITEBYTECODE": "1",
            },
            start_new_session=True,
        )
    supervised = SupervisedAgent(
        root=install_root, port=port, token=token, log_path=log_path, loop=loop
    )
    try:
        supervised.wait_for_version(RUNNING_VERSION, START_DEADLINE_S)
        yield supervised
    finally:
        supervised.close()
