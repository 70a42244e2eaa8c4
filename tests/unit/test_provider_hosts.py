"""The hosts a logged-in CLI may reach: exact entries, no login-only host, each named by the CLI."""

from __future__ import annotations

import functools
import mmap
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from hearth.auth.providers import VENDOR_EGRESS
from hearth.images.vendor import GUEST_VENDOR_DIR, ensure_vendor_tree
from hearth.network.allowlist import AllowRule
from hearth.network.provider_hosts import PROVIDER_API_HOSTS, QUIET_ENV
from hearth_agent.wire import Provider

CLIS = [Provider.CLAUDE_CODE, Provider.CODEX, Provider.GEMINI_CLI]

# The installed packages of each pinned CLI (its npm package and its native platform package).
CLI_PACKAGES = {
    Provider.CLAUDE_CODE: ["@anthropic-ai/claude-code", "@anthropic-ai/claude-code-linux-x64"],
    Provider.CODEX: ["@openai/codex", "@openai/codex-linux-x64"],
    Provider.GEMINI_CLI: ["@google/gemini-cli"],
}

# Hosts of each login that only the sign-in needs (its pages, their static files, bot checks);
# every other login host must be one the run needs too. A host added to VENDOR_EGRESS has to be
# put on one side or the other.
LOGIN_ONLY = {
    Provider.CODEX: {"auth-cdn.oaistatic.com", "sentinel.openai.com", "challenges.cloudflare.com"},
    Provider.CLAUDE_CODE: {
        "claude.com",
        "claude.ai",
        "assets-proxy.anthropic.com",
        "challenges.cloudflare.com",
        "accounts.google.com",
        "www.gstatic.com",
        "ssl.gstatic.com",
        "fonts.gstatic.com",
    },
    Provider.GEMINI_CLI: {
        "accounts.google.com",
        "www.gstatic.com",
        "ssl.gstatic.com",
        "fonts.gstatic.com",
    },
}

# Hosts each pinned CLI names but runs without (telemetry, updates, crash and feedback reports,
# connectors): the table leaves them out, and the grep below shows the CLI really names them.
OPTIONAL = {
    Provider.CLAUDE_CODE: [
        "http-intake.logs.us5.datadoghq.com",  # Datadog event logs
        "downloads.claude.ai",  # updates, plugin marketplace, model catalog
        "storage.googleapis.com",  # older update bucket
        "mcp-proxy.anthropic.com",  # claude.ai connectors
    ],
    Provider.CODEX: [
        "ab.chatgpt.com",  # metrics (OTLP)
        "api.openai.com",  # the API-key provider
        "api.github.com",  # update check
        "registry.npmjs.org",  # update check
        "raw.githubusercontent.com",  # announcement tip
        "persistent.oaistatic.com",  # TUI pets
    ],
    Provider.GEMINI_CLI: [
        "play.googleapis.com",  # Clearcut usage statistics
        "www.googleapis.com",  # userinfo (best effort); also Cloud Storage
        "registry.npmjs.org",  # update check
    ],
}

# Hosts where anyone can publish: none may be reached, except chatgpt.com by codex, whose model
# API under a ChatGPT login lives there.
PUBLISHING_HOSTS = [
    "lh3.googleusercontent.com",
    "script.google.com",
    "storage.googleapis.com",
    "www.googleapis.com",
    "files.oaiusercontent.com",
    "api.openai.com",
    "chatgpt.com",
    "example.claudeusercontent.com",
]


def admits(allow: Sequence[str], host: str, port: int = 443) -> bool:
    return any(AllowRule.parse(entry).matches(host, port) for entry in allow)


def vendor_modules() -> Path:
    """The pinned CLIs' node_modules in the image cache, installed there first if missing (the
    same ``npm ci`` the cli image build runs; skip only where npm itself is missing)."""
    if shutil.which("npm") is None:
        pytest.skip("needs npm to install the pinned vendor CLIs (scripts/install.sh installs it)")
    cache = Path(os.environ.get("HEARTH_CACHE_DIR", "/var/cache/hearth"))
    return ensure_vendor_tree(cache) / GUEST_VENDOR_DIR / "node_modules"


@functools.cache
def cli_files(provider: Provider) -> tuple[Path, ...]:
    """Every file of the CLI's packages, a hard-linked copy (claude's two binaries) once."""
    modules = vendor_modules()
    files: dict[tuple[int, int], Path] = {}
    for package in CLI_PACKAGES[provider]:
        assert (modules / package).is_dir(), f"{package} is not installed in {modules}"
        for path in sorted((modules / package).rglob("*")):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                files.setdefault((stat.st_dev, stat.st_ino), path)
    return tuple(files.values())


_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def names(
    files: Sequence[Path], needle: bytes, *, before: frozenset[int], after: frozenset[int]
) -> bool:
    """Whether ``needle`` occurs in ``files`` between bytes outside ``before`` and ``after``."""
    for path in files:
        if path.stat().st_size == 0:
            continue
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(needle)
            while at >= 0:
                end = at + len(needle)
                if (at == 0 or data[at - 1] not in before) and (
                    end == len(data) or data[end] not in after
                ):
                    return True
                at = data.find(needle, at + 1)
    return False


def names_url(files: Sequence[Path], host: str) -> bool:
    """``https://host`` not followed by more of a host name (api.anthropic.co is not .com)."""
    return names(files, b"https://" + host.encode(), before=frozenset(), after=_HOST_CHARS)


def names_variable(files: Sequence[Path], variable: str) -> bool:
    """``variable`` as a whole name, not as part of a longer one."""
    return names(files, variable.encode(), before=_NAME_CHARS, after=_NAME_CHARS)


def test_every_provider_has_a_table_entry_and_a_quiet_env() -> None:
    assert set(PROVIDER_API_HOSTS) == set(Provider)
    assert set(QUIET_ENV) == set(Provider)


def test_an_oidc_credential_brings_no_api_host() -> None:
    assert PROVIDER_API_HOSTS[Provider.OIDC] == ()


@pytest.mark.parametrize("provider", CLIS)
def test_every_entry_is_one_exact_host_on_443(provider: Provider) -> None:
    rules = [AllowRule.parse(entry) for entry in PROVIDER_API_HOSTS[provider]]
    assert rules, "a CLI needs at least its model API"
    assert [rule.host for rule in rules if rule.wildcard] == []
    assert all(rule.port == 443 for rule in rules)
    assert len({rule.host for rule in rules}) == len(rules), "no host listed twice"


@pytest.mark.parametrize("provider", CLIS)
def test_each_login_host_is_either_needed_by_the_run_or_only_by_the_sign_in(
    provider: Provider,
) -> None:
    run = {AllowRule.parse(entry).host for entry in PROVIDER_API_HOSTS[provider]}
    login = {AllowRule.parse(entry).host for entry in VENDOR_EGRESS[provider]}
    assert LOGIN_ONLY[provider] <= login, "LOGIN_ONLY names a host the login does not list"
    assert run & LOGIN_ONLY[provider] == set()
    assert login - LOGIN_ONLY[provider] <= run, "a login host the run may or may not need"


@pytest.mark.parametrize(
    ("provider", "host"),
    [
        (provider, host)
        for provider in Provider
        for host in PUBLISHING_HOSTS
        if (provider, host) != (Provider.CODEX, "chatgpt.com")
    ],
)
def test_no_run_reaches_a_host_where_anyone_can_publish(provider: Provider, host: str) -> None:
    assert not admits(PROVIDER_API_HOSTS[provider], host)


@pytest.mark.parametrize(
    ("provider", "host"), [(p, host) for p, hosts in OPTIONAL.items() for host in hosts]
)
def test_optional_hosts_are_left_out_of_the_table(provider: Provider, host: str) -> None:
    assert not admits(PROVIDER_API_HOSTS[provider], host)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("provider", "host"),
    [(p, AllowRule.parse(entry).host) for p in CLIS for entry in PROVIDER_API_HOSTS[p]],
)
def test_the_pinned_cli_names_each_host_of_its_table(provider: Provider, host: str) -> None:
    assert names_url(cli_files(provider), host), f"no https://{host} in the pinned CLI"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("provider", "host"), [(p, host) for p, hosts in OPTIONAL.items() for host in hosts]
)
def test_the_pinned_cli_names_each_host_it_runs_without(provider: Provider, host: str) -> None:
    assert names_url(cli_files(provider), host), f"no https://{host} in the pinned CLI"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("provider", "variable"), [(p, name) for p in CLIS for name in QUIET_ENV[p]]
)
def test_the_pinned_cli_reads_each_quiet_variable(provider: Provider, variable: str) -> None:
    assert names_variable(cli_files(provider), variable), f"the pinned CLI never names {variable}"


@pytest.mark.slow
def test_the_host_grep_wants_the_whole_host_name() -> None:
    files = cli_files(Provider.CLAUDE_CODE)
    assert names_url(files, "api.anthropic.com")
    assert not names_url(files, "api.anthropic.co")
    assert not names_variable(files, "DISABLE_TELEMETR")
