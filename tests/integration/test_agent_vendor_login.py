"""The agent's vendor login runner on the host: PTY, prompt script, URL helper, file capture.

A scripted CLI (``fake_vendor_cli.py``) stands in for the vendor CLIs here; the real ones run in
the VM tests. Everything else is real: the pseudo-terminal, the terminal emulator, the helper
installed as ``$BROWSER`` and ``xdg-open``, process groups, and the login registry.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hearth_agent import __version__
from hearth_agent.errors import InvalidInput
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginRegistry, LoginSession, LoginStatus
from hearth_agent.metrics import AgentMetrics
from hearth_agent.providers import SUPPORTED_PROVIDERS, get_provider
from hearth_agent.vendor import (
    START_ATTEMPTS,
    VENDOR_LOGINS,
    PromptStep,
    VendorLogin,
    VendorLoginRunner,
    VendorStartFailed,
    cli_status,
)
from tests.integration.conftest import AgentLauncher

FAKE_CLI = Path(__file__).with_name("fake_vendor_cli.py")
STATE = "s3cret-state-value"
URL = f"https://login.example.test/authorize?client_id=fake-client&state={STATE}"
DIALOG_STEPS = (
    PromptStep("method", "How would you like to sign in?", "\r"),
    PromptStep("consent", "Do you want to continue?", "\r"),
)


class Harness:
    """A registry whose opened URLs and log lines the test can read."""

    def __init__(self, tmp_path: Path) -> None:
        self.work_root = tmp_path / "logins"
        self.bin_dir = tmp_path / "bin"
        self.bin_dir.mkdir()
        wrapper = self.bin_dir / "fakecli"
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_CLI} "$@"\n')
        wrapper.chmod(0o755)
        self.log = io.StringIO()
        self.logger = JsonLogger(stream=self.log)
        self.opened: list[str] = []
        self.registry = LoginRegistry(
            logger=self.logger,
            metrics=AgentMetrics(version=__version__, providers=SUPPORTED_PROVIDERS),
            open_url=self._open,
        )
        self.runners: list[VendorLoginRunner] = []

    def _open(self, url: str) -> bool:
        self.opened.append(url)
        return True

    def runner(
        self,
        mode: str,
        *,
        steps: tuple[PromptStep, ...] = (),
        crash_exits: tuple[int, ...] = (),
        **kwargs: float,
    ) -> VendorLoginRunner:
        login = VendorLogin(
            provider="codex",
            command=("fakecli", mode, URL),
            steps=steps,
            waiting=("Waiting for authentication",),
            crash_exits=crash_exits,
        )
        runner = VendorLoginRunner(
            login,
            work_root=self.work_root,
            logger=self.logger,
            search_path=f"{self.bin_dir}:/usr/bin:/bin",
            **kwargs,
        )
        self.runners.append(runner)
        return runner


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for runner in harness.runners:
        runner.cancel()

    def leftovers() -> list[Path]:
        return list(harness.work_root.iterdir()) if harness.work_root.exists() else []

    # The registry's watcher may still be releasing a runner that ended on its own.
    wait_for(lambda: leftovers() == [], "private login directories to be removed", 10.0)


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def pids_of(command_fragment: str, home: Path) -> list[int]:
    """Live processes whose environment's HOME is ``home`` (the login's private home)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        mine = f"HOME={home}".encode() in environ.split(b"\0")
        if mine and command_fragment.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_prompts_are_answered_in_order_and_the_credential_file_is_captured(
    harness: Harness,
) -> None:
    runner = harness.runner("dialog", steps=DIALOG_STEPS)
    session = harness.registry.start("codex", runner)
    assert session.status is LoginStatus.WAITING_FOR_USER
    assert session.view().authorize_url == URL
    assert harness.opened == [URL]
    home = runner.home
    assert home is not None
    # Drawn once the CLI's BROWSER helper returns, which may be after start() has the URL.
    wait_for(lambda: "Waiting for authentication" in runner.screen_text, "the CLI to wait")
    # The CLI gets a private home (0700) with a clean environment.
    assert (home.parent.stat().st_mode & 0o777) == 0o700
    (home / "go").touch()  # "the browser came back": the CLI writes its file
    assert session.wait_until_ended(20)
    assert session.status is LoginStatus.CAPTURED
    document = json.loads(session.document or b"{}")
    get_provider("codex").validate(document)
    assert document["tokens"]["refresh_token"] == "fake-refresh-token-value"
    events = [json.loads(line) for line in harness.log.getvalue().splitlines()]
    answered = [e["prompt"] for e in events if e["event"] == "vendor_prompt_answered"]
    assert answered == ["method", "consent"]
    # The registry released the runner: the CLI is gone and so is its private directory.
    wait_for(
        lambda: not harness.work_root.exists() or not any(harness.work_root.iterdir()), "cleanup"
    )
    # Nothing secret in the agent's log: not the URL's state, not the tokens.
    text = harness.log.getvalue()
    assert STATE not in text
    assert "fake-refresh-token-value" not in text


def test_the_url_given_to_xdg_open_is_captured_too(harness: Harness) -> None:
    session = harness.registry.start("codex", harness.runner("xdg"))
    assert session.view().authorize_url == URL


def test_a_question_no_script_answers_fails_the_start_with_unexpected_prompt(
    harness: Harness,
) -> None:
    with pytest.raises(VendorStartFailed) as raised:
        harness.registry.start("codex", harness.runner("theme"))
    assert raised.value.code == "unexpected_prompt"
    assert "Use Enter to select" in raised.value.message
    assert harness.opened == []


def test_a_cli_that_exits_without_credentials_fails_the_login(harness: Harness) -> None:
    session = harness.registry.start("codex", harness.runner("exit"))
    assert session.wait_until_ended(20)
    assert session.status is LoginStatus.FAILED
    assert session.view().error == "cli_exited"
    # The log says how it ended (an OOM kill would read "killed by SIGKILL").
    assert (
        "fakecli exited (exit status 3) without writing ~/.codex/auth.json"
        in harness.log.getvalue()
    )


def test_a_cli_that_crashes_at_start_is_started_once_more(harness: Harness) -> None:
    session = harness.registry.start("codex", harness.runner("crash-once"))
    assert session.status is LoginStatus.WAITING_FOR_USER
    assert harness.opened == [URL]
    log = harness.log.getvalue()
    assert "vendor_cli_crashed_at_start" in log
    assert "killed by SIGSEGV" in log


def test_a_cli_that_crashes_at_every_start_fails_the_login_naming_the_signal(
    harness: Harness,
) -> None:
    with pytest.raises(VendorStartFailed) as raised:
        harness.registry.start("codex", harness.runner("crash"))
    assert raised.value.code == "cli_exited"
    assert "killed by SIGSEGV" in raised.value.message
    assert harness.log.getvalue().count("vendor_cli_crashed_at_start") == START_ATTEMPTS - 1
    assert harness.opened == []


def test_a_crash_exit_of_the_recipe_counts_as_a_crash_at_start(harness: Harness) -> None:
    # As Gemini once did under emulation: SIGSEGV, then its runtime's abort (Node's exit 7).
    session = harness.registry.start("codex", harness.runner("crash-twice", crash_exits=(7,)))
    assert session.status is LoginStatus.WAITING_FOR_USER
    assert harness.opened == [URL]
    log = harness.log.getvalue()
    assert log.count("vendor_cli_crashed_at_start") == 2
    assert "killed by SIGSEGV" in log
    assert "exit status 7" in log


def test_an_exit_status_the_recipe_does_not_name_is_no_crash(harness: Harness) -> None:
    with pytest.raises(VendorStartFailed) as raised:
        harness.registry.start("codex", harness.runner("crash-twice"))
    assert "exit status 7" in raised.value.message
    assert harness.log.getvalue().count("vendor_cli_crashed_at_start") == 1


def test_a_cli_that_never_hands_over_a_url_fails_at_the_start_deadline(harness: Harness) -> None:
    with pytest.raises(VendorStartFailed) as raised:
        harness.registry.start("codex", harness.runner("silent", start_timeout_s=3.0))
    assert raised.value.code == "no_login_url"


def test_cancel_kills_the_cli_and_everything_it_started(harness: Harness) -> None:
    runner = harness.runner("child")
    session = harness.registry.start("codex", runner)
    home = runner.home
    assert home is not None
    wait_for(lambda: bool(pids_of("sleep", home)), "the CLI's grandchild")
    cli = pids_of("fake_vendor_cli", home)
    assert cli
    harness.registry.cancel(session.login_id)
    assert session.status is LoginStatus.CANCELLED
    wait_for(lambda: not pids_of("sleep", home) and not pids_of("fake_vendor_cli", home), "exit")
    assert not home.exists()


def test_the_login_times_out_at_its_deadline_and_the_cli_is_stopped(harness: Harness) -> None:
    runner = harness.runner("xdg", deadline_s=2.0)
    session = harness.registry.start("codex", runner)
    home = runner.home
    assert home is not None
    assert session.wait_until_ended(20)
    assert session.view().error == "timeout"
    wait_for(lambda: not pids_of("fake_vendor_cli", home), "the CLI to be stopped")


def test_a_missing_cli_is_reported_as_not_installed(harness: Harness, tmp_path: Path) -> None:
    login = replace(VENDOR_LOGINS["codex"], command=("no-such-vendor-cli", "login"))
    runner = VendorLoginRunner(login, work_root=tmp_path / "w", logger=harness.logger)
    with pytest.raises(VendorStartFailed) as raised:
        runner.start(LoginSession(login_id="x", provider="codex"))
    assert raised.value.code == "cli_not_installed"
    assert "no-such-vendor-cli" in raised.value.message


def test_start_body_is_validated() -> None:
    logger = JsonLogger(stream=io.StringIO())
    for body in (
        {"provider": "codex", "timeout_s": 0},
        {"provider": "codex", "timeout_s": True},
        {"provider": "codex", "issuer": "https://x"},
        {"provider": "oidc"},
    ):
        with pytest.raises(InvalidInput):
            VendorLoginRunner.from_request(body, work_root=Path("/nonexistent"), logger=logger)


def test_every_vendor_provider_has_a_login_and_the_table_matches_the_providers() -> None:
    assert set(VENDOR_LOGINS) == {"codex", "claude_code", "gemini_cli"}
    assert set(VENDOR_LOGINS) < set(SUPPORTED_PROVIDERS)
    # Gemini ignores BROWSER: its two dialogs are scripted; the others print no prompt.
    assert [s.name for s in VENDOR_LOGINS["gemini_cli"].steps] == ["auth_method", "browser_consent"]


def test_status_of_a_provider_without_a_command_says_so(tmp_path: Path) -> None:
    report = cli_status(get_provider("gemini_cli"), home=tmp_path)
    assert report.command is None
    assert report.logged_in is None
    assert "no offline status command" in str(report.reason)
    missing = cli_status(get_provider("codex"), home=tmp_path, search_path=str(tmp_path))
    assert missing.logged_in is None
    assert missing.reason == "the 'codex' command is not installed in this VM"


def test_clean_environment_hides_the_agents_own(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI / DEBIAN_FRONTEND=noninteractive would switch Gemini to its paste-the-code flow.
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("DEBIAN_FRONTEND", "noninteractive")
    runner = harness.runner("xdg")
    harness.registry.start("codex", runner)
    home = runner.home
    assert home is not None
    wait_for(lambda: bool(pids_of("fake_vendor_cli", home)), "the CLI")
    pid = pids_of("fake_vendor_cli", home)[0]
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in item
    )
    assert "CI" not in environ
    assert "DEBIAN_FRONTEND" not in environ
    assert environ["HOME"] == str(home)
    assert environ["BROWSER"].endswith("/hearth-open-url")
    assert environ["DISPLAY"] == os.environ.get("DISPLAY", ":0")


def test_claude_status_is_read_from_its_json_even_with_other_output_around() -> None:
    said = VENDOR_LOGINS["claude_code"].logged_in
    assert said('{\n  "loggedIn": true,\n  "authMethod": "claude.ai"\n}\nwarning: old node\n')
    assert not said('{"loggedIn": false}')
    assert not said("error: no credentials")
    assert VENDOR_LOGINS["codex"].logged_in("Logged in using ChatGPT\n")


def test_the_agents_login_route_runs_the_vendor_cli_which_dies_with_the_agent(
    agent_launcher: AgentLauncher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in named `codex` first on the agent's PATH: the real table entry runs it.
    marker = f"https://login.example.test/authorize?state=agent-{os.getpid()}"
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "codex").write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_CLI} xdg "{marker}"\n')
    (fake_bin / "codex").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    agent = agent_launcher.start_with_token()
    with agent.client(agent.token) as client:
        started = client.post("/login/start", json={"provider": "codex", "timeout_s": 300})
        assert started.status_code == 201, started.text
        assert started.json()["authorize_url"] == marker
        assert started.json()["status"] == "waiting_for_user"

    def running() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if entry.name.isdigit() and marker.encode() in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    assert running(), "the CLI should run while the login waits"
    assert agent.stop() == 0
    wait_for(lambda: not running(), "the CLI to stop with the agent", 10.0)
    assert "login_ended" in agent.log_text()
