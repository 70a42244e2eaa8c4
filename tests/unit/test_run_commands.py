"""The headless command line of each vendor CLI: its flags, the prompt on stdin, a quiet env."""

from __future__ import annotations

import re

import pytest

from hearth.errors import InvalidInput
from hearth.network.provider_hosts import QUIET_ENV
from hearth.runs import RunCommand, run_command
from hearth_agent.wire import Provider

CLIS = [Provider.CLAUDE_CODE, Provider.CODEX, Provider.GEMINI_CLI]
SID = "0f93dd13-19d3-4113-bc2b-24c9669101f2"


def test_claude_runs_print_mode_streaming_json_with_partial_messages() -> None:
    command = run_command(Provider.CLAUDE_CODE, prompt="Say hello")
    assert command.argv == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--permission-mode",
        "bypassPermissions",
    ]
    assert command.stdin == "Say hello"
    assert command.env == {**QUIET_ENV[Provider.CLAUDE_CODE], "IS_SANDBOX": "1", "NO_COLOR": "1"}


def test_claude_model_and_resume() -> None:
    command = run_command(Provider.CLAUDE_CODE, prompt="go on", model="sonnet", resume=SID)
    assert command.argv[-4:] == ["--model", "sonnet", "--resume", SID]


def test_codex_runs_exec_json_reading_the_prompt_from_stdin() -> None:
    command = run_command(Provider.CODEX, prompt="Say hello")
    assert command.argv == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "--color",
        "never",
        "-c",
        "analytics.enabled=false",
        "-",
    ]
    assert command.stdin == "Say hello"
    assert command.env == {**QUIET_ENV[Provider.CODEX], "NO_COLOR": "1"}


def test_codex_resume_is_a_subcommand_after_the_exec_options() -> None:
    thread = "01a23e75-68b4-7d33-9e11-5739f2498f0c"
    command = run_command(Provider.CODEX, prompt="go on", model="gpt-5-codex", resume=thread)
    assert command.argv[-5:] == ["--model", "gpt-5-codex", "resume", thread, "-"]


def test_gemini_runs_headless_stream_json_trusting_the_workspace() -> None:
    command = run_command(Provider.GEMINI_CLI, prompt="Say hello")
    assert command.argv == [
        "gemini",
        "-p",
        "",
        "--output-format",
        "stream-json",
        "--skip-trust",
        "--approval-mode",
        "yolo",
    ]
    assert command.stdin == "Say hello"
    assert command.env == {
        **QUIET_ENV[Provider.GEMINI_CLI],
        "GOOGLE_GENAI_USE_GCA": "true",
        "GEMINI_CLI_NO_RELAUNCH": "true",
        "NO_COLOR": "1",
    }


def test_gemini_model_and_resume() -> None:
    command = run_command(Provider.GEMINI_CLI, prompt="go on", model="gemini-2.5-pro", resume=SID)
    assert command.argv[-4:] == ["--model", "gemini-2.5-pro", "--resume", SID]


@pytest.mark.parametrize("provider", CLIS)
def test_the_prompt_goes_on_stdin_never_in_argv(provider: Provider) -> None:
    prompt = "secret plan " + "x" * 200_000  # past the kernel's 128 KiB limit for one argument
    command = run_command(provider, prompt=prompt, model="m-1", resume="abc")
    assert command.stdin == prompt
    assert all("secret plan" not in arg for arg in command.argv)


@pytest.mark.parametrize("provider", CLIS)
def test_the_environment_quiets_the_cli_and_carries_no_secret(provider: Provider) -> None:
    command = run_command(provider, prompt="hi")
    assert QUIET_ENV[provider].items() <= command.env.items()
    for name, value in command.env.items():
        assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY|CREDENTIAL", name), name
        assert len(value) < 16, (name, value)
        assert "PROXY" not in name  # the agent's exec environment decides the way out


def test_commands_are_values() -> None:
    command = run_command(Provider.CODEX, prompt="hi")
    assert command == run_command(Provider.CODEX, prompt="hi")
    assert isinstance(command, RunCommand)


def test_oidc_has_no_cli_to_run() -> None:
    with pytest.raises(InvalidInput, match="oidc"):
        run_command(Provider.OIDC, prompt="hi")


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_an_empty_prompt_is_refused(prompt: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        run_command(Provider.CLAUDE_CODE, prompt=prompt)


@pytest.mark.parametrize(
    "model",
    ["-x", "--dangerously-skip-permissions", "a b", "m\n", "", "x" * 201, "$(id)", "a;b"],
)
def test_a_model_that_reads_as_something_else_is_refused(model: str) -> None:
    with pytest.raises(InvalidInput, match="model"):
        run_command(Provider.GEMINI_CLI, prompt="hi", model=model)


@pytest.mark.parametrize(
    "model",
    ["opus", "claude-sonnet-4-5[1m]", "gpt-5.1-codex", "gemini-2.5-pro", "us.anthropic/x:1"],
)
def test_real_model_names_are_accepted(model: str) -> None:
    assert model in run_command(Provider.CLAUDE_CODE, prompt="hi", model=model).argv


@pytest.mark.parametrize("resume", ["--last", "-", "a b", "../x", "id/1", "", "x" * 201])
def test_a_resume_id_that_reads_as_something_else_is_refused(resume: str) -> None:
    with pytest.raises(InvalidInput, match="resume"):
        run_command(Provider.CODEX, prompt="hi", resume=resume)
