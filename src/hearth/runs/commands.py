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
from collections.abc import Mapping
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


def resumable(session_id: str) -> bool:
    """Whether ``session_id`` is one a run may resume: the parsers keep no other from a CLI's
    output (text a broken CLI, or one a model steered, could fill with anything: a NUL, which
    PostgreSQL's text cannot hold, or megabytes)."""
    return _SESSION_ID.fullmatch(session_id) is not None


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
    cli = _CLIS.get(provider)
    if cli is None:
        raise InvalidInput(f"provider {provider.value!r} has no CLI to run")
    if not prompt.strip():
        raise InvalidInput("the prompt is empty")
    if model is not None and not _MODEL.fullmatch(model):
        raise InvalidInput("model: letters, digits and . _ : / @ [ ] -, not starting with -")
    if resume is not None and not resumable(resume):
        raise InvalidInput("resume: a session id (letters, digits and . _ -)")
    env = {**quiet_env([provider]), **cli.env}
    return RunCommand(argv=cli.build(model, resume), stdin=prompt, env=env)


@dataclass(frozen=True, kw_only=True)
class _Cli:
    """One CLI's headless command line: its fixed argv, the word before a session id to resume
    (``--model`` is the same for all three), what ends the argv, and its environment beyond
    QUIET_ENV."""

    argv: tuple[str, ...]
    resume: str = "--resume"
    tail: tuple[str, ...] = ()
    env: Mapping[str, str]

    def build(self, model: str | None, resume: str | None) -> list[str]:
        """The argv for a run with ``model`` and continuing session ``resume`` (when given)."""
        argv = list(self.argv)
        if model is not None:
            argv += ["--model", model]
        if resume is not None:
            argv += [self.resume, resume]
        return [*argv, *self.tail]


_CLIS: dict[Provider, _Cli] = {
    Provider.CLAUDE_CODE: _Cli(
        argv=(
            "claude",
            "-p",  # print mode: answer once, then exit; the prompt is read from stdin
            "--output-format",
            "stream-json",
            "--verbose",  # stream-json in print mode requires it
            "--include-partial-messages",  # text deltas as they stream, not only whole blocks
            "--permission-mode",
            "bypassPermissions",  # run tools without asking; nobody could answer
        ),
        env={
            # bypassPermissions refuses to start as root (the agent's user) unless the process
            # says it runs in a sandbox on purpose: claude checks IS_SANDBOX === "1".
            "IS_SANDBOX": "1",
            "NO_COLOR": "1",
        },
    ),
    Provider.CODEX: _Cli(
        argv=(
            "codex",
            "exec",
            "--json",  # JSONL events on stdout
            "--skip-git-repo-check",  # the workspace need not be a git repository
            # No approval prompts and no sandbox of codex's own: its Linux sandbox (bubblewrap,
            # Landlock) is not what isolates a run in a VM; the flag exists for "environments
            # that are externally sandboxed". `codex exec resume` has no --sandbox or
            # --ask-for-approval.
            "--dangerously-bypass-approvals-and-sandbox",
            "--color",
            "never",
            "-c",
            "analytics.enabled=false",  # no metrics exporter or analytics events (see QUIET_ENV)
        ),
        resume="resume",  # a subcommand, after the exec options
        tail=("-",),  # "-": the prompt is read from stdin
        env={"NO_COLOR": "1"},
    ),
    Provider.GEMINI_CLI: _Cli(
        argv=(
            "gemini",
            # Headless mode; stdin is the prompt and -p's own text is appended to it: nothing.
            "-p",
            "",
            "--output-format",
            "stream-json",
            "--skip-trust",  # else headless gemini exits (55) in a folder nobody trusted
            "--approval-mode",
            "yolo",  # run tools without asking; nobody could answer
        ),
        env={
            # The login the auth flow delivered is "Login with Google"; the delivered
            # settings.json names it too, this keeps a headless run from stopping at "Please set
            # an Auth method" should that file be missing (it selects the method; it carries no
            # credential).
            "GOOGLE_GENAI_USE_GCA": "true",
            # One process: gemini otherwise re-runs itself in a second node with a larger heap,
            # and a CLI killed by a signal would then show as exit status 1.
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "NO_COLOR": "1",
        },
    ),
}
