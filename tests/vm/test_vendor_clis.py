"""The vendor CLIs for real, offline, in VMs: logins in the Browser VM, status in the CLI VM.

The images carry codex, claude and gemini from npm at pinned versions (``hearth image build
--recipe cli|browser``). In the Browser VM the agent runs each vendor's own login command under a
pseudo-terminal; the test reads the authorize URL the CLI handed to its "browser" and checks the
vendor's client id and loopback redirect, then plays the browser coming back with a wrong state.
In the CLI VM, a delivered document must satisfy the vendor's own offline status command.
The VMs have no way out (QEMU user-net, restrict=on): nothing here reaches a vendor.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hearth.bench.standins.documents import sample_document
from hearth.images.manifest import ROOTFS_NAME, ImageDir
from hearth.images.vendor import pinned_versions, system_settings
from hearth.vm.readiness import Deadline
from hearth.vm.types import Vm, VmSpec, VmType
from tests.integration.test_image_agent_install import debugfs_cat
from tests.vm.browser_fixtures import DevTools
from tests.vm.conftest import TrackingBackend
from tests.vm.test_browser_vm import BROWSER_SPEC, DEVTOOLS_RELAY_PORT, SERVICE_DEADLINE_S

pytestmark = [pytest.mark.slow, pytest.mark.vm]

# Under TCG the CLIs are slow to start (claude is a 380 MB native binary): generous timeouts.
AGENT_TIMEOUT_S = 300.0
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
CLAUDE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
GEMINI_CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
CLI_SPEC = VmSpec(vm_type=VmType.CLI, vcpus=1, mem_mib=1024)


@pytest.fixture
async def cli_agent(
    cli_image: ImageDir, qemu_backend: TrackingBackend
) -> AsyncIterator[httpx.AsyncClient]:
    vm = await qemu_backend.create(cli_image, CLI_SPEC)
    async with agent_client(vm) as client:
        yield client


def agent_client(vm: Vm) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=str(vm.agent_url),
        headers={"Authorization": f"Bearer {vm.token}"},
        timeout=AGENT_TIMEOUT_S,
    )


async def status(client: httpx.AsyncClient, provider: str) -> dict[str, Any]:
    started = time.monotonic()
    response = await client.get(f"/credentials/{provider}/status")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    print(f"{report['command']}: exit {report['exit_code']} in {time.monotonic() - started:.1f} s")
    return report


async def put(client: httpx.AsyncClient, provider: str, document: dict[str, object]) -> None:
    response = await client.put(f"/credentials/{provider}", content=json.dumps(document))
    assert response.status_code == 200, response.text


def test_cli_image_pins_the_vendor_cli_versions(cli_image: ImageDir) -> None:
    manifest = cli_image.manifest
    assert manifest is not None
    assert manifest.recipe == "cli"
    versions = pinned_versions()
    assert versions["@openai/codex"] == "0.171.0"
    assert versions["@anthropic-ai/claude-code"] == "2.1.332"
    assert versions["@google/gemini-cli"] == "0.61.0"
    for path, data in system_settings().items():
        assert debugfs_cat(cli_image.path / ROOTFS_NAME, f"/{path}") == data, path


async def test_delivered_documents_satisfy_the_vendor_clis_own_status_commands(
    cli_agent: httpx.AsyncClient,
) -> None:
    # Nothing delivered yet: both CLIs say so.
    before = await status(cli_agent, "codex")
    assert before["command"] == "codex login status"
    assert before["logged_in"] is False
    assert before["exit_code"] == 1
    assert "Not logged in" in before["stdout"] + before["stderr"]
    assert (await status(cli_agent, "claude_code"))["logged_in"] is False

    await put(cli_agent, "codex", sample_document("codex", "vm"))
    codex = await status(cli_agent, "codex")
    assert codex["exit_code"] == 0
    assert codex["logged_in"] is True
    assert "Logged in using ChatGPT" in codex["stderr"]

    await put(cli_agent, "claude_code", sample_document("claude_code", "vm"))
    claude = await status(cli_agent, "claude_code")
    assert claude["exit_code"] == 0
    assert claude["logged_in"] is True
    assert json.loads(claude["stdout"][claude["stdout"].index("{") :])["loggedIn"] is True

    # Without the user:inference scope Claude Code reports itself logged out.
    scoped = sample_document("claude_code", "vm2")
    oauth = scoped["claudeAiOauth"]
    assert isinstance(oauth, dict)
    oauth["scopes"] = ["user:profile"]
    await put(cli_agent, "claude_code", scoped)
    assert (await status(cli_agent, "claude_code"))["logged_in"] is False

    # Gemini has no offline status command: its files are checked instead.
    await put(cli_agent, "gemini_cli", sample_document("gemini_cli", "vm"))
    gemini = await status(cli_agent, "gemini_cli")
    assert gemini["command"] is None
    assert "no offline status command" in gemini["reason"]
    stored = (await cli_agent.get("/credentials/gemini_cli")).json()
    assert stored["present"] is True
    assert stored["mode"] == "0600"
    assert stored["expires_at"] == pytest.approx(1_900_000_000.5)
    # None of the secrets came back in any status output.
    for report in (codex, claude, gemini):
        said = report["stdout"] + report["stderr"]
        assert "rt-codex-refresh" not in said
        assert "sk-ant" not in said
    # The three live in the one VM at once: with Claude's document whole again, each CLI says
    # it is logged in, and Gemini's files are still there.
    await put(cli_agent, "claude_code", sample_document("claude_code", "vm"))
    assert (await status(cli_agent, "codex"))["logged_in"] is True
    assert (await status(cli_agent, "claude_code"))["logged_in"] is True
    assert (await cli_agent.get("/credentials/gemini_cli")).json()["present"] is True


# -- logins in the Browser VM ---------------------------------------------------------------------


@pytest.fixture
async def browser_vm(browser_image: ImageDir, qemu_backend: TrackingBackend) -> Vm:
    qemu_backend.cold_deadline_s = 300.0
    return await qemu_backend.create(browser_image, BROWSER_SPEC)


async def start_login(client: httpx.AsyncClient, provider: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = await client.post("/login/start", json={"provider": provider})
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    print(f"{provider}: login URL after {elapsed:.1f} s")
    assert body["status"] == "waiting_for_user"
    assert body["opened_in_browser"] is True
    return body, elapsed


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


async def login_status(client: httpx.AsyncClient, login_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/login/{login_id}")).json()
    return body


async def wait_for_status(
    client: httpx.AsyncClient, login_id: str, wanted: str, timeout_s: float = 120
) -> dict[str, Any]:
    deadline = Deadline.after(timeout_s)
    while True:
        body = await login_status(client, login_id)
        if body["status"] == wanted or deadline.expired:
            return body
        await asyncio.sleep(0.5)


async def tab_urls(devtools: DevTools) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as client:
        targets = (await client.get(f"{devtools.base}/json/list")).json()
    return [t["url"] for t in targets if t.get("type") == "page"]


async def logins_counted(agent: httpx.AsyncClient, provider: str, outcome: str) -> bool:
    """Whether the agent counted one such login. The status turns ``failed`` in the login's own
    thread and its watcher counts it a moment later, so a reader that saw the status waits."""
    deadline = Deadline.after(10)
    while True:
        metrics = (await agent.get("/metrics")).text
        if f'provider="{provider}",outcome="{outcome}"}} 1' in metrics:
            return True
        if deadline.expired:
            return False
        await asyncio.sleep(0.1)


# One Browser VM per login, as the controller does (each test restores its own from the template).


async def test_codex_login_hands_its_url_to_chromium_and_refuses_a_wrong_state(
    browser_vm: Vm,
) -> None:
    devtools = DevTools(browser_vm.ports[DEVTOOLS_RELAY_PORT])
    await devtools.wait_until_answering(Deadline.after(SERVICE_DEADLINE_S))
    async with agent_client(browser_vm) as agent:
        # codex: no prompts, fixed callback port 1455.
        codex, _ = await start_login(agent, "codex")
        url = codex["authorize_url"]
        assert url.startswith("https://auth.openai.com/oauth/authorize?")
        query = query_of(url)
        assert query["client_id"] == CODEX_CLIENT_ID
        redirect = urllib.parse.urlsplit(query["redirect_uri"])
        assert (redirect.hostname, redirect.port, redirect.path) in {
            ("localhost", 1455, "/auth/callback"),
            ("127.0.0.1", 1455, "/auth/callback"),
        }
        assert query["code_challenge_method"] == "S256"
        deadline = Deadline.after(60)
        while not any(u.startswith("https://auth.openai.com/") for u in await tab_urls(devtools)):
            assert not deadline.expired, await tab_urls(devtools)
            await asyncio.sleep(1)
        # The browser coming back with a wrong state: codex refuses it and keeps waiting.
        bad = f"{query['redirect_uri']}?code=not-a-code&state=not-the-state"
        await devtools.open_tab(bad, Deadline.after(60))
        await asyncio.sleep(3)
        assert (await login_status(agent, codex["login_id"]))["status"] == "waiting_for_user"
        cancelled = (await agent.delete(f"/login/{codex['login_id']}")).json()
        assert cancelled["status"] == "cancelled"
        assert await logins_counted(agent, "codex", "cancelled")


async def test_claude_login_hands_its_url_to_chromium_and_a_wrong_state_ends_it(
    browser_vm: Vm,
) -> None:
    devtools = DevTools(browser_vm.ports[DEVTOOLS_RELAY_PORT])
    await devtools.wait_until_answering(Deadline.after(SERVICE_DEADLINE_S))
    async with agent_client(browser_vm) as agent:
        # claude: BROWSER gets the full URL; callback on a random loopback port.
        claude, _ = await start_login(agent, "claude_code")
        query = query_of(claude["authorize_url"])
        assert urllib.parse.urlsplit(claude["authorize_url"]).hostname in {
            "claude.ai",
            "claude.com",
        }
        assert query["client_id"] == CLAUDE_CLIENT_ID
        redirect = urllib.parse.urlsplit(query["redirect_uri"])
        assert redirect.hostname in {"localhost", "127.0.0.1"}
        assert redirect.path == "/callback"
        assert "user:inference" in query["scope"].split()
        # One wrong state aborts Claude's whole login: the session fails, it does not hang.
        bad = f"{query['redirect_uri']}?code=not-a-code&state=not-the-state"
        await devtools.open_tab(bad, Deadline.after(60))
        failed = await wait_for_status(agent, claude["login_id"], "failed")
        assert failed["status"] == "failed"
        assert failed["error"] == "cli_exited"
        assert await logins_counted(agent, "claude_code", "failed")


async def test_gemini_login_answers_its_dialogs_and_hands_its_url_to_chromium(
    browser_vm: Vm,
) -> None:
    devtools = DevTools(browser_vm.ports[DEVTOOLS_RELAY_PORT])
    await devtools.wait_until_answering(Deadline.after(SERVICE_DEADLINE_S))
    async with agent_client(browser_vm) as agent:
        # gemini: ignores BROWSER (xdg-open), and two dialogs are answered by its script.
        gemini, _ = await start_login(agent, "gemini_cli")
        url = gemini["authorize_url"]
        assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
        query = query_of(url)
        assert query["client_id"] == GEMINI_CLIENT_ID
        redirect = urllib.parse.urlsplit(query["redirect_uri"])
        assert redirect.hostname == "127.0.0.1"
        assert redirect.path == "/oauth2callback"
        assert (await agent.delete(f"/login/{gemini['login_id']}")).json()["status"] == "cancelled"
        assert await logins_counted(agent, "gemini_cli", "cancelled")
