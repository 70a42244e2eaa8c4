"""A vendor CLI's login across a crash of the agent, on real processes: the CLI is recorded while
it runs (as an exec is), so the agent that starts next kills it and what it started; a CLI that
ends (cancelled, or exiting by itself) leaves no record behind.

The agent's crash closes the CLI's terminal, whose hangup (SIGHUP) ends a CLI that keeps the
default action; what ignores or traps it runs on, and is what the records are for.

The scripted CLI of ``test_agent_vendor_login`` (``fake_vendor_cli.py``) stands in for the vendor
CLIs; the runner, its pseudo-terminal, the login registry and the records are the agent's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hearth_agent.exec_records import ExecRecords
from hearth_agent.login import LoginStatus
from hearth_agent.vendor import VendorLogin, VendorLoginRunner
from tests.integration.conftest import AGENT_SOURCE
from tests.integration.test_agent_vendor_login import (
    FAKE_CLI,
    URL,
    Harness,
    alive,
    pids_of,
    wait_for,
)

if TYPE_CHECKING:
    from conftest import AgentLauncher

# The first agent, up to its crash: it records what it runs in RUN_DIR/execs as the agent's main
# does, starts a login through the registry, says where the CLI's home is, and waits to be killed.
CRASHING_AGENT = """
import sys, time
from collections.abc import Iterator
from pathlib import Path
from hearth_agent import __version__
from hearth_agent.exec_records import ExecRecords
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginRegistry
from hearth_agent.metrics import AgentMetrics
from hearth_agent.providers import SUPPORTED_PROVIDERS
from hearth_agent.vendor import VendorLogin, VendorLoginRunner

run_dir, work_root, bin_dir, url = sys.argv[1:]
logger = JsonLogger(stream=sys.stderr)
records = ExecRecords.create(Path(run_dir) / "execs", logger=logger)
login = VendorLogin(provider="codex", command=("fakecli", "child", url))
runner = VendorLoginRunner(
    login, work_root=Path(work_root), logger=logger, search_path=f"{bin_dir}:/usr/bin:/bin",
    records=records,
)
registry = LoginRegistry(
    logger=logger,
    metrics=AgentMetrics(version=__version__, providers=SUPPORTED_PROVIDERS),
    open_url=lambda url: True,
)
registry.start("codex", runner)
print(runner.home, flush=True)
time.sleep(3600)
"""


def fake_cli_dir(tmp_path: Path, *, ignore_hangup: bool = False) -> Path:
    """A directory holding ``fakecli``, the scripted CLI; with ``ignore_hangup`` it and what it
    starts ignore SIGHUP (as a CLI that traps it does, or a helper it starts with nohup)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "fakecli"
    trap = "trap '' HUP\n" if ignore_hangup else ""
    wrapper.write_text(f'#!/bin/sh\n{trap}exec {sys.executable} {FAKE_CLI} "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


def test_an_agent_started_after_a_crash_kills_the_login_cli_the_crashed_one_left(
    agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    bin_dir = fake_cli_dir(tmp_path, ignore_hangup=True)
    arguments = [str(run_dir), str(tmp_path / "logins"), str(bin_dir), URL]
    crashed = subprocess.Popen(
        [sys.executable, "-S", "-c", CRASHING_AGENT, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(AGENT_SOURCE)},
    )
    cli: list[int] = []
    try:
        assert crashed.stdout is not None
        home = Path(crashed.stdout.readline().decode().strip())
        wait_for(lambda: bool(pids_of("sleep", home)), "the CLI's grandchild")
        cli = pids_of("fake_vendor_cli", home) + pids_of("sleep", home)
        assert len(cli) == 2
        assert len(os.listdir(run_dir / "execs")) == 1  # the CLI's record
        os.kill(crashed.pid, signal.SIGKILL)  # the OOM killer, a bug: no cancel, no cleanup
        crashed.wait()
        time.sleep(0.5)  # the hangup of its terminal has reached it
        assert all(alive(pid) for pid in cli), "the CLI should outlive its agent's crash"

        restarted = agent_launcher.start("--insecure-no-auth", "--run-dir", str(run_dir))

        wait_for(lambda: not any(alive(pid) for pid in cli), "the left-over CLI to be killed", 5.0)
        assert [
            r["processes"]
            for r in restarted.log_records()
            if r["event"] == "left_over_execs_killed"
        ] == [2]
        assert os.listdir(run_dir / "execs") == []
    finally:
        if crashed.poll() is None:
            crashed.kill()
            crashed.wait()
        for pid in cli:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


class RecordingLogins(Harness):
    """The vendor login tests' registry, with runners that record their CLIs in ``records``."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.records = ExecRecords.create(tmp_path / "run" / "execs", logger=self.logger)

    def recording_runner(self, mode: str) -> VendorLoginRunner:
        runner = VendorLoginRunner(
            VendorLogin(provider="codex", command=("fakecli", mode, URL)),
            work_root=self.work_root,
            logger=self.logger,
            search_path=f"{self.bin_dir}:/usr/bin:/bin",
            records=self.records,
        )
        self.runners.append(runner)
        return runner

    def recorded(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.records.directory))

    def close(self) -> None:
        """Cancel every login (a test that failed may have left one running)."""
        for runner in self.runners:
            runner.cancel()


@pytest.fixture
def logins(tmp_path: Path) -> Iterator[RecordingLogins]:
    with contextlib.closing(RecordingLogins(tmp_path)) as logins:
        yield logins


def test_a_cancelled_login_forgets_its_cli_record(logins: RecordingLogins) -> None:
    runner = logins.recording_runner("child")
    session = logins.registry.start("codex", runner)
    home = runner.home
    assert home is not None
    assert logins.recorded() == pids_of("fake_vendor_cli", home)

    logins.registry.cancel(session.login_id)

    assert session.status is LoginStatus.CANCELLED
    assert logins.recorded() == []


def test_a_cli_that_ends_by_itself_leaves_no_record(logins: RecordingLogins) -> None:
    runner = logins.recording_runner("child")
    session = logins.registry.start("codex", runner)
    home = runner.home
    assert home is not None
    cli = pids_of("fake_vendor_cli", home)
    assert logins.recorded() == cli

    os.kill(cli[0], signal.SIGKILL)  # the kernel's OOM killer, say: the driver reaps it

    assert session.wait_until_ended(20)
    assert session.view().error == "cli_exited"
    wait_for(lambda: logins.recorded() == [], "the CLI's record to be removed", 5.0)
