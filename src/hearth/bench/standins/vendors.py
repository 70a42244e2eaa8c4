"""``VendorCli``: how each real vendor CLI is run headless against its stand-in.

One value per CLI: its command line (and how to resume a session), the environment it needs to
trust the test CA and to stay quiet, the stand-in that plays its provider, and how the agent's
credential document becomes its HOME. The command lines are the ones the product runs; what a
CLI needs beyond the delivered credential (``GEMINI_CLI_TRUST_WORKSPACE``, codex's
``--skip-git-repo-check``) is named here so a reader finds it in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hearth.bench.standins.anthropic import AnthropicStandIn
from hearth.bench.standins.gemini import GeminiStandIn
from hearth.bench.standins.openai import OpenAIStandIn
from hearth.bench.standins.standin import ProviderStandIn
from hearth.network.provider_hosts import QUIET_ENV
from hearth_agent.log import JsonLogger
from hearth_agent.providers import PROVIDERS
from hearth_agent.storage import CredentialStore
from hearth_agent.wire import Provider

# Variables that point a CLI's TLS stack at an extra CA bundle (a PEM file).
#  - claude (Bun): NODE_EXTRA_CA_CERTS adds the file to the bundled roots.
#  - codex (Rust, rustls): CODEX_CA_CERTIFICATE (else SSL_CERT_FILE) replaces the system roots
#    with the file's certificates for its HTTP clients.
#  - gemini (Node 20): NODE_EXTRA_CA_CERTS, read once at process start.
CA_VARIABLE: Mapping[Provider, str] = {
    Provider.CLAUDE_CODE: "NODE_EXTRA_CA_CERTS",
    Provider.CODEX: "CODEX_CA_CERTIFICATE",
    Provider.GEMINI_CLI: "NODE_EXTRA_CA_CERTS",
}


def _claude_token(document: Mapping[str, object]) -> str:
    oauth = document["claudeAiOauth"]
    assert isinstance(oauth, dict)
    return str(oauth["accessToken"])


def _codex_token(document: Mapping[str, object]) -> str:
    tokens = document["tokens"]
    assert isinstance(tokens, dict)
    return str(tokens["access_token"])


def _gemini_token(document: Mapping[str, object]) -> str:
    return str(document["access_token"])


@dataclass(frozen=True)
class VendorCli:
    """One vendor CLI: command line, environment, stand-in, and credential."""

    provider: Provider
    standin: type[ProviderStandIn]
    executable: str  # its name in node_modules/.bin
    arguments: Callable[[str, str | None], list[str]]  # (prompt, session to resume) -> args
    access_token: Callable[[Mapping[str, object]], str]
    run_env: Mapping[str, str] = field(default_factory=dict)  # needed beyond the credential
    node: bool = False  # a Node script: run it with the vendor tree's node

    def command(self, modules: Path, prompt: str, *, resume: str | None = None) -> list[str]:
        """The argv of a headless run of ``prompt``, resuming session ``resume`` if given."""
        binary = str(modules / ".bin" / self.executable)
        head = [str(modules / ".bin" / "node"), binary] if self.node else [binary]
        return [*head, *self.arguments(prompt, resume)]

    def environment(self, *, ca_bundle: Path) -> dict[str, str]:
        """What the CLI needs in its environment beyond HOME, PATH and the proxy."""
        return {
            CA_VARIABLE[self.provider]: str(ca_bundle),
            **QUIET_ENV[self.provider],
            **self.run_env,
        }

    def deliver(self, home: Path, document: Mapping[str, object]) -> Path:
        """Write ``document`` into ``home`` exactly as the in-VM agent does (primary file and
        side files); returns the primary file."""
        store = CredentialStore(home=home, logger=JsonLogger())
        credential = PROVIDERS[self.provider.value]
        store.write(credential, json.dumps(document).encode())
        return store.path_of(credential)


def _claude_arguments(prompt: str, resume: str | None) -> list[str]:
    # stream-json in -p needs --verbose; partial messages make the answer stream out as text
    # deltas (stream_event lines) rather than only as one finished message.
    head = ["-p", prompt, "--output-format", "stream-json", "--verbose"]
    return [*head, "--include-partial-messages", *(["--resume", resume] if resume else [])]


def _codex_arguments(prompt: str, resume: str | None) -> list[str]:
    # The workspace is no git repository; analytics off is the config key QUIET_ENV names.
    head = ["exec", "--json", "--skip-git-repo-check", "-c", "analytics.enabled=false"]
    return [*head, *(["resume", resume] if resume else []), prompt]


def _gemini_arguments(prompt: str, resume: str | None) -> list[str]:
    return [
        "-p",
        prompt,
        "--output-format",
        "stream-json",
        *(["--resume", resume] if resume else []),
    ]


CLAUDE = VendorCli(
    provider=Provider.CLAUDE_CODE,
    standin=AnthropicStandIn,
    executable="claude",
    arguments=_claude_arguments,
    access_token=_claude_token,
)

CODEX = VendorCli(
    provider=Provider.CODEX,
    standin=OpenAIStandIn,
    executable="codex",
    arguments=_codex_arguments,
    access_token=_codex_token,
    node=True,
)

GEMINI = VendorCli(
    provider=Provider.GEMINI_CLI,
    standin=GeminiStandIn,
    executable="gemini",
    arguments=_gemini_arguments,
    access_token=_gemini_token,
    # A headless run in a folder the user never trusted exits 55 at once.
    run_env={"GEMINI_CLI_TRUST_WORKSPACE": "true"},
    node=True,
)

VENDORS: Mapping[Provider, VendorCli] = {v.provider: v for v in (CLAUDE, CODEX, GEMINI)}
