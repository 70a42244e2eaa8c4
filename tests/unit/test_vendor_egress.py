"""The default per-login allowlists: each vendor's login hosts, no host anyone can publish on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from hearth.auth.providers import VENDOR_EGRESS
from hearth.network.egress import AllowRule, EgressProxy

VENDORS = sorted(VENDOR_EGRESS)

# Hosts where anyone can put content (or take an upload) that someone else then reads: a page in
# the Browser VM could carry the OAuth code or tokens out through any of them.
PUBLISHING_HOSTS = [
    "lh3.googleusercontent.com",  # profile pictures, and the rest of *.googleusercontent.com:
    "script.googleusercontent.com",  # Apps Script web app output
    "doc-0s-docs.googleusercontent.com",  # Drive downloads
    "script.google.com",  # Apps Script web apps take anyone's POST
    "sites.google.com",  # Google Sites
    "docs.google.com",  # Google Forms take anyone's answers
    "storage.googleapis.com",  # Cloud Storage: anyone's bucket
    "attacker-bucket.storage.googleapis.com",
    "www.googleapis.com",  # also serves the Cloud Storage JSON and upload API
    "firebasestorage.googleapis.com",
    "files.oaiusercontent.com",  # ChatGPT uploads and generated files
    "sdmntprwestus.oaiusercontent.com",
    "api.openai.com",  # keeps files under anyone's API key
    "chatgpt.com",  # anyone's shared conversations and GPTs
    "example.claudeusercontent.com",  # artifacts
]

# What each pinned CLI calls or opens during its login (read from its sources).
LOGIN_HOSTS = {
    "codex": ["auth.openai.com"],  # authorize, /oauth/token, /api/accounts
    "claude_code": [
        "claude.com",  # CLAUDE_AI_AUTHORIZE_URL
        "claude.ai",  # the sign-in page it redirects to
        "platform.claude.com",  # TOKEN_URL, CLAUDEAI_SUCCESS_URL
        "api.anthropic.com",  # /api/oauth/profile, ROLES_URL
    ],
    "gemini_cli": [
        "accounts.google.com",  # /o/oauth2/v2/auth
        "oauth2.googleapis.com",  # /token
        "cloudcode-pa.googleapis.com",  # loadCodeAssist, onboardUser
    ],
}


def admits(allow: Sequence[str], host: str, port: int = 443) -> bool:
    return any(AllowRule.parse(entry).matches(host, port) for entry in allow)


@pytest.mark.parametrize("host", PUBLISHING_HOSTS)
@pytest.mark.parametrize("vendor", VENDORS)
def test_no_login_may_reach_a_host_where_anyone_can_publish(vendor: str, host: str) -> None:
    assert not admits(VENDOR_EGRESS[vendor], host)


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_entry_is_one_exact_host_so_no_wildcard_admits_hosts_nobody_vetted(
    vendor: str,
) -> None:
    rules = [AllowRule.parse(entry) for entry in VENDOR_EGRESS[vendor]]
    assert [rule.host for rule in rules if rule.wildcard] == []
    assert all(rule.port == 443 for rule in rules)
    assert len({rule.host for rule in rules}) == len(rules), "no host listed twice"


@pytest.mark.parametrize(
    ("vendor", "host"), [(vendor, host) for vendor, hosts in LOGIN_HOSTS.items() for host in hosts]
)
def test_each_login_may_reach_the_hosts_its_cli_calls(vendor: str, host: str) -> None:
    assert admits(VENDOR_EGRESS[vendor], host)


async def test_the_proxy_refuses_an_apps_script_page_to_a_gemini_login_without_resolving() -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)  # never answers: a test sends nothing off the machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with EgressProxy(VENDOR_EGRESS["gemini_cli"], resolver=resolver) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"CONNECT script.google.com:443 HTTP/1.1\r\nHost: script.google.com\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert asked == []
