"""Fixtures that run the real in-VM agent (``python -m hearth_agent``) as a subprocess on loopback.

Layered by lifecycle stage: ``agent_launcher`` starts and reaps any number of agents;
``agent`` is one running agent with a token file; ``agent_client``/``anonymous_client`` talk to
it over HTTP. Every agent started is killed by PID in teardown, which then proves it is gone.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.bench.standins.documents import sample_document
from hearth_agent.exec_pty import signal_session

AGENT_SOURCE = Path(__file__).resolve().parents[2] / "src"
START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0


def port_accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def new_token() -> str:
    """A fresh token in the agent's accepted alphabet ([A-Za-z0-9_-], 43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class RawResponse:
    """A response read off a raw socket, for requests httpx refuses to send."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class AgentProcess:
    """One agent subprocess: its home, token, log file and (once listening) port."""

    home: Path
    token_file: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    token: str | None = None
    port: int | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """The agent's process id."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self.port is not None, "agent is not listening yet"
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """Everything the agent wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        """The stderr log parsed line by line (every line must be a JSON object)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def wait_until_listening(self, deadline_s: float = START_DEADLINE_S) -> int:
        """Wait for the ``listening`` log line and return the bound port; fail fast on exit."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for record in self.log_records() if self.log_path.exists() else []:
                if record.get("event") == "listening":
                    port = record["port"]
                    assert isinstance(port, int)
                    self.port = port
                    return port
            if self.process.poll() is not None:
                pytest.fail(
                    f"agent exited with {self.process.returncode} before listening:\n"
                    + self.log_text()
                )
            time.sleep(0.02)
        pytest.fail(f"agent did not log 'listening' within {deadline_s}s:\n{self.log_text()}")

    def wait_until_healthy(self, deadline_s: float = START_DEADLINE_S) -> None:
        """Wait until ``GET /health`` answers 200."""
        self.wait_until_listening(deadline_s)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        pytest.fail(f"agent /health did not answer within {deadline_s}s:\n{self.log_text()}")

    def client(self, token: str | None = None) -> httpx.Client:
        """An httpx client for this agent, sending ``token`` as bearer if given."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10.0)

    def send_raw(self, data: bytes, *, read_deadline_s: float = 5.0) -> RawResponse:
        """Send bytes on a fresh connection and parse the response the agent writes back."""
        with socket.create_connection(("127.0.0.1", self.base_port()), timeout=5.0) as sock:
            sock.sendall(data)
            sock.settimeout(read_deadline_s)
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return RawResponse(status=int(status_line.split()[1]), headers=headers, body=body)

    def base_port(self) -> int:
        """The bound port (fails if the agent is not listening)."""
        assert self.port is not None, "agent is not listening yet"
        return self.port

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOP_DEADLINE_S)
        finally:
            self._stopped = True

    def kill(self) -> None:
        """Kill the agent by PID, and what it ran, as a VM's end would; reap it. Safe to call
        any number of times.

        Each exec the agent started leads a session of its own, which the agent's death would
        leave running on the host: the agent is stopped first (it starts nothing more), its
        children are listed, then it is killed and so is each child's session.
        """
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)
            sessions = _children(self.process.pid)
            os.kill(self.process.pid, signal.SIGKILL)
            for session in sessions:
                signal_session(session, signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE_S)
        self._stopped = True


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 1 and int(fields[1]) == pid:  # after the name: state, ppid
            children.append(int(entry.name))
    return children


class AgentLauncher:
    """Starts agents under one temporary directory and reaps every one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.tmp = root / "tmp"
        self.token_file = root / "secrets" / "token"
        self._agents: list[AgentProcess] = []

    def write_token(self, token: str | None = None) -> str:
        """Write a token file (0600) and return the token."""
        token = token if token is not None else new_token()
        self.token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.token_file.write_text(token + "\n", encoding="utf-8")
        self.token_file.chmod(0o600)
        return token

    def spawn(self, *args: str, default_args: bool = True) -> AgentProcess:
        """Start an agent without waiting; ``default_args`` adds --listen and --home."""
        # -S drops site-packages: the agent must run on a bare python3 with only the stdlib.
        command = [sys.executable, "-S", "-m", "hearth_agent"]
        if default_args:
            command += ["--listen", "127.0.0.1:0", "--home", str(self.home)]
        command += list(args)
        log_path = self.root / f"agent-{len(self._agents)}.log"
        # The launcher's own temp dir (the agents' logins' folders are made under it): agents
        # of other tests, which remove the folders dead agents left, keep out of this one's.
        self.tmp.mkdir(exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env={
                    "PATH": os.environ.get("PATH", ""),
                    "PYTHONPATH": str(AGENT_SOURCE),
                    "TMPDIR": str(self.tmp),
                },
            )
        agent = AgentProcess(
            home=self.home, token_file=self.token_file, log_path=log_path, process=process
        )
        self._agents.append(agent)
        return agent

    def start(self, *args: str, token: str | None = None) -> AgentProcess:
        """Start an agent, wait until /health answers, and remember ``token`` for clients."""
        agent = self.spawn(*args)
        agent.token = token
        agent.wait_until_healthy()
        return agent

    def start_with_token(self) -> AgentProcess:
        """Write a token file and start an agent that requires it."""
        token = self.write_token()
        return self.start("--token-file", str(self.token_file), token=token)

    def run_to_exit(self, *args: str, deadline_s: float = START_DEADLINE_S) -> AgentProcess:
        """Start an agent expected to exit by itself and wait for it."""
        agent = self.spawn(*args)
        agent.process.wait(timeout=deadline_s)
        return agent

    def close(self) -> None:
        """Kill every agent by PID (LIFO), then prove none is left running."""
        errors: list[str] = []
        for agent in reversed(self._agents):
            try:
                agent.kill()
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"pid {agent.pid}: {exc!r}")
        alive = [agent.pid for agent in self._agents if agent.process.poll() is None]
        assert not errors, errors
        assert not alive, f"agent processes left behind: {alive}"


@pytest.fixture
def agent_launcher(tmp_path: Path) -> Iterator[AgentLauncher]:
    """Starts agents on loopback under ``tmp_path``; kills them all afterwards."""
    launcher = AgentLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def agent(agent_launcher: AgentLauncher) -> AgentProcess:
    """A healthy agent that requires the bearer token from its token file."""
    return agent_launcher.start_with_token()


@pytest.fixture
def agent_client(agent: AgentProcess) -> Iterator[httpx.Client]:
    """An httpx client that sends the agent's token."""
    with agent.client(agent.token) as client:
        yield client


@pytest.fixture
def anonymous_client(agent: AgentProcess) -> Iterator[httpx.Client]:
    """An httpx client that sends no token."""
    with agent.client() as client:
        yield client


@pytest.fixture
def make_document() -> Callable[..., dict[str, object]]:
    """Builds a valid credential document: ``make_document("codex", marker="x")``."""
    return sample_document
