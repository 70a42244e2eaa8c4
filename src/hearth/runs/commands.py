"""The command line that starts a vendor CLI's headless mode for one run in a CLI VM.

Each CLI runs with the login the auth flow delivered into the VM's home: Hearth adds no key and
no secret, only the flags of the CLI's own headless mode and the environment that keeps it quiet
(``QUIET_ENV``). The prompt goes on stdin, which all three read in headless mode: argv is
visible to every process in ``ps`` and limited to 128 KiB per argument. Nothing may wait for a
person: a run has no terminal, and the VM, thrown away with its user's workspace, is the
sandbox, so each CLI runs its tools without asking.

    claude -p --output-format stream-json --verbose --include-partial-messages
           --permission-mode bypassPermissions [--model M] [--resume ID]      (IS_SANDBOX=1)
    codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox
           --color never -c analytics.enabled=false [--model M] [resume ID] -
    gemini -p "" --output-format stream-json --skip-trust --approval-mode yolo
           [--model M] [--resume ID]

``resume`` is the CLI's own session id (claude's ``session_id``, codex's ``thread_id``, gemini's
``session_id``), which the parser exposes as ``session_id``. Claude and gemini keep sessions per
working directory: a resumed run must start in the same ``cwd`` as the run it continues.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hearth.errors import InvalidInput
from hearth.network.provider_hosts import quiet_env
from hearth_agent.wire import Provider

# Models and session ids become argv items: they must not read as an option (a leading "-") or
# carry anything a shell-less argv would pass on verbatim to the CLI's own parser. Model names
# allow what the three CLIs use (aliases, versions, "[1m]" context suffixes, provider ARNs).
# The API's wire schema takes these same patterns, so it refuses no name a run would take.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]{0,199}$"
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_MODEL = re.compile(MODEL_PATTERN)
_SESSION_ID = re.compile(SESSION_ID_PATTERN)

# Headless environment beyond QUIET_ENV, per CLI.
_HEADLESS_ENV: dict[Provider, dict[str, str]] = {
    Provider.CLAUDE_CODE: {
        # bypassPermissions refuses to start as root (the agent's user) unless the process says
        # it runs in a sandbox on purpose: claude checks IS_SANDBOX === "1".
        "IS_SANDBOX": "1",
        "NO_COLOR": "1",
    },
    Provider.CODEX: {"NO_COLOR": "1"},
    Provider.GEMINI_CLI: {
        # The login the auth flow delivered is "Login with Google"; the delivered settings.json
        # names it too, this keeps a headless run from stopping at "Please set an Auth method"
        # should that file be missing (it selects the method; it carries no credential).
        "GOOGLE_GENAI_USE_GCA": "true",
        # One process: gemini otherwise re-runs itself in a second node with a larger heap, and
        # a CLI killed by a signal would then show as exit status 1.
        "GEMINI_CLI_NO_RELAUNCH": "true",
        "NO_COLOR": "1",
    },
}


@dataclass(frozen=True)
class RunCommand:
    """What the agent runs for one run: argv (no shell), the prompt for stdin, extra env."""

    argv: list[str]
    stdin: str
    env: dict[str, str]


def run_command(
    provider: Provider, *, prompt: str, model: str | None = None, resume: str | None = None
) -> RunCommand:
    """The headless command line of ``provider``'s CLI for ``prompt``.

    Raises InvalidInput for a provider without a CLI (``oidc``), an empty prompt, or a model or
    session id that could be read as something else on the command line.
    """
    build = _BUILDERS.get(provider)
    if build is None:
        raise InvalidInput(f"provider {provider.value!r} has no CLI to run")
    if not prompt.strip():
        raise InvalidInput("the prompt is empty")
    if model is not None and not _MODEL.fullmatch(model):
        raise InvalidInput("model: letters, digits and . _ : / @ [ ] -, not starting with -")
    if resume is not None and not _SESSION_ID.fullmatch(resume):
        raise InvalidInput("resume: a session id (letters, digits and . _ -)")
    env = {**quiet_env([provider]), **_HEADLESS_ENV[provider]}
    return RunCommand(argv=build(model, resume), stdin=prompt, env=env)


def _claude(model: str | None, resume: str | None) -> list[str]:
    argv = [
        "claude",
        "-p",  # print mode: answer once, then exit; the prompt is read from stdin
        "--output-format",
        "stream-json",
        "--verbose",  # stream-json in print mode requires it
        "--include-partial-messages",  # text deltas as they stream, not only whole blocks
        "--permission-mode",
        "bypassPermissions",  # run tools without asking; nobody could answer
    ]
    if model is not None:
        argv += ["--model", model]
    if resume is not None:
        argv += ["--resume", resume]
    return argv


def _codex(model: str | None, resume: str | None) -> list[str]:
    argv = [
        "codex",
        "exec",
        "--json",  # JSONL events on stdout
        "--skip-git-repo-check",  # the workspace need not be a git repository
        # No approval prompts and no sandbox of codex's own: its Linux sandbox (bubblewrap,
        # Landlock) is not what isolates a run in a VM; the flag exists for "environments that
        # are externally sandboxed". `codex exec resume` has no --sandbox/--ask-for-approval.
        "--dangerously-bypass-approvals-and-sandbox",
        "--color",
        "never",
        "-c",
        "analytics.enabled=false",  # no metrics exporter or analytics events (see QUIET_ENV)
    ]
    if model is not None:
        argv += ["--model", model]
    if resume is not None:
        argv += ["resume", resume]
    return [*argv, "-"]  # "-": the prompt is read from stdin


def _gemini(model: str | None, resume: str | None) -> list[str]:
    argv = [
        "gemini",
        # Headless mode; stdin is the prompt and -p's own text is appended to it: nothing.
        "-p",
        "",
        "--output-format",
        "stream-json",
        "--skip-trust",  # else headless gemini exits (55) in a folder nobody trusted
        "--approval-mode",
        "yolo",  # run tools without asking; nobody could answer
    ]
    if model is not None:
        argv += ["--model", model]
    if resume is not None:
        argv += ["--resume", resume]
    return argv


_BUILDERS = {
    Provider.CLAUDE_CODE: _claude,
    Provider.CODEX: _codex,
    Provider.GEMINI_CLI: _gemini,
}
