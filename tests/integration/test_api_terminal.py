"""``POST /api/vms/{id}/terminal`` and its page's WebSocket, against the API served on loopback
over VMs whose agents are real processes: a real login shell on a real pseudo-terminal.

The page itself in a real browser is ``test_terminal_browser.py``; a terminal in a real VM
shows nothing more of the controller, whose relay is the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from asyncio.subprocess import PIPE
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect

from hearth.config import Settings
from hearth.images.trust import GUEST_TLS_ENV
from hearth.network.provider_hosts import quiet_env
from hearth.sdk import AsyncHearth, Hearth
from tests.agent_backend import AgentBackend
from tests.conftest import HEARTH
from tests.integration.api_fixtures import assert_error
from tests.integration.conftest import AgentLauncher
from tests.integration.sdk_fixtures import Live, serving
from tests.integration.terminal_fixtures import *  # noqa: F403
from tests.integration.terminal_fixtures import (
    Link,
    TerminalSocket,
    new_vm,
    open_link,
    ready_terminal,
)
from tests.unit.test_agent_execs import process_gone

# What only the command's output shows on a line of its own (what was typed reads "$((6*7))").
ANSWER = "42"


async def refused(live: Live, link: Link, token: str | None = None) -> tuple[int, dict[str, str]]:
    """Open the link's socket with ``token`` (the link's own by default): the close code and
    the error status the controller sent before closing."""
    async with connect(link.socket_url(live)) as connection:
        socket = TerminalSocket(connection)
        await socket.open(token or link.token)
        code = await socket.until_closed()
    assert [s["type"] for s in socket.statuses] == ["error"], socket.statuses
    return code, socket.statuses[0]


async def shell_pids(socket: TerminalSocket) -> tuple[int, int]:
    """The shell's pid and a background job's (host pids: the agent runs on this host)."""
    await socket.type("sleep 300 & echo pi''ds $$ $!\r")
    await socket.until_screen("pids ")
    while not (found := re.search(r"pids (\d+) (\d+)\r\n", socket.screen)):
        await socket.receive_one()
    return int(found[1]), int(found[2])


async def until_gone(*pids: int, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not all(process_gone(pid) for pid in pids):
            await asyncio.sleep(0.05)


# --- the round trip -------------------------------------------------------------------------


async def test_typed_input_reaches_the_shell_and_its_output_comes_back(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    assert 0 < link.expires_in_s <= 60

    async with ready_terminal(live_api, link) as socket:
        await socket.type("echo hi\r")
        await socket.until_line("hi")
        await socket.type("echo $((6*7)); echo $TERM; pwd; tty\r")
        await socket.until_screen("/dev/pts/")
        lines = await socket.until_line(ANSWER)

    assert "xterm-256color" in lines
    assert any(line.endswith("/workspace") for line in lines)  # the agent's workspace


async def test_a_paste_bigger_than_the_agent_takes_at_once_arrives_whole(live_api: Live) -> None:
    # xterm sends a paste as one frame; the agent takes at most 1 MiB a request.
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    paste = b"0123456789abcdef" * 80_000  # 1.28 MB

    async with ready_terminal(live_api, link) as socket:
        # Raw, so the line discipline passes every byte; the paste goes once the shell says so.
        await socket.type('stty raw -echo; echo RE""ADY; head -c 1280000 | wc -c; stty sane\r')
        await socket.until_screen("READY")
        await socket.connection.send(paste)
        await socket.until_screen("1280000")


async def test_a_resize_message_changes_the_terminals_size(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with ready_terminal(live_api, link, cols=90, rows=30) as socket:
        await socket.type("stty size\r")
        await socket.until_line("30 90")
        await socket.resize(100, 40)
        await socket.type("stty size\r")
        await socket.until_line("40 100")
        # A size out of range is refused with a status; the terminal goes on.
        await socket.resize(0, 40)
        error = await socket.until_status("error")
        assert error["code"] == "invalid_input"
        await socket.type("echo $((6*7))\r")
        await socket.until_line(ANSWER)


async def test_the_shell_has_what_a_runs_cli_gets_to_trust_the_guest_and_stay_quiet(
    live_api: Live,
) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    wanted = {**GUEST_TLS_ENV, **quiet_env()}

    async with ready_terminal(live_api, link) as socket:
        await socket.type("env; echo en''d\r")
        lines = await socket.until_line("end")

    assert {f"{name}={value}" for name, value in wanted.items()} <= set(lines)


async def test_the_shell_ending_ends_the_socket_with_its_exit(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with ready_terminal(live_api, link) as socket:
        await socket.type("exit 3\r")
        ended = await socket.until_status("exit")
        assert await socket.until_closed() == 1000

    assert ended["code"] == 3
    assert ended["reason"] == "exited"


async def test_a_shell_outlives_the_limit_of_a_command(
    terminal_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # A terminal's shell took a command's limit (HEARTH_EXEC_TIMEOUT_S, an hour by default):
    # the agent killed it then, mid-work. It has its own (HEARTH_TERMINAL_TIMEOUT_S).
    settings = terminal_settings.with_overrides(exec_timeout_s=1.0)
    async with serving(settings, AgentBackend(agent_launcher), tmp_path) as live:
        vm_id = await new_vm(live, "ann")
        link = await open_link(live, vm_id, live.keys["ann"])
        async with ready_terminal(live, link) as socket:
            await asyncio.sleep(2.5)
            await socket.type("echo $((6*7))\r")
            await socket.until_line(ANSWER)


async def test_an_open_terminal_does_not_wake_its_paused_vm(
    live_api: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relay reads the shell's output on its own: not use. It took a paused VM's stalled
    # stream for a broken one and read again through the route's gate, which resumed the VM.
    monkeypatch.setattr("hearth.agent_client.EVENT_STREAM_READ_TIMEOUT_S", 0.3)
    client, ann = live_api.api.client, live_api.api.headers(live_api.keys["ann"])
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    async with ready_terminal(live_api, link) as socket:
        assert (await client.post(f"/api/vms/{vm_id}/pause", headers=ann)).status_code == 200
        await asyncio.sleep(2.0)  # several of the relay's reads time out meanwhile
        status = (await client.get(f"/api/vms/{vm_id}", headers=ann)).json()["status"]
        assert status == "paused"
        # What the page types is use: it resumes the VM, and the shell answers.
        await socket.type("echo $((6*7))\r")
        await socket.until_line(ANSWER)
    status = (await client.get(f"/api/vms/{vm_id}", headers=ann)).json()["status"]
    assert status == "ready"


async def test_a_terminal_closed_while_its_vm_sleeps_kills_its_shell_once_it_runs(
    live_api: Live,
) -> None:
    # The kill went through the route's gate: it woke the paused VM to kill the shell (or,
    # without autoResume, failed, and the shell ran on once the VM was resumed).
    client, ann = live_api.api.client, live_api.api.headers(live_api.keys["ann"])
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    async with ready_terminal(live_api, link) as socket:
        shell, job = await shell_pids(socket)
        assert (await client.post(f"/api/vms/{vm_id}/pause", headers=ann)).status_code == 200
    await asyncio.sleep(1.5)  # the relay has ended and its kill waits
    assert (await live_api.api.ctl.store.vms.get(vm_id)).status.value == "paused"
    assert not process_gone(shell)
    assert (await client.post(f"/api/vms/{vm_id}/resume", headers=ann)).status_code == 200
    await until_gone(shell, job)


async def test_a_revoked_key_ends_its_terminal_and_its_unopened_links(live_api: Live) -> None:
    # A revoked key stops authenticating at once: a shell it opened ends, and so does the use
    # of a link it asked for.
    api = live_api.api
    vm_id = await new_vm(live_api, "ann")
    key = await api.user_key("ann")
    key_id = (await api.client.get("/api/keys?userId=ann", headers=api.headers())).json()["keys"]
    key_id = key_id[-1]["id"]  # the newest
    link, spare = [await open_link(live_api, vm_id, key) for _ in range(2)]

    async with ready_terminal(live_api, link) as socket:
        revoked = await api.client.delete(f"/api/keys/{key_id}", headers=api.headers())
        assert revoked.status_code == 200, revoked.text
        error = await socket.until_status("error")
        assert error["code"] == "unauthorized"
        await socket.until_closed()

    code, refusal = await refused(live_api, spare)
    assert (code, refusal["code"]) == (4401, "unauthorized")


# --- the link: one use, a short life, the right user ------------------------------------------


async def test_a_link_opens_once(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with ready_terminal(live_api, link) as socket:
        code, error = await refused(live_api, link)
        assert code == 4401
        assert error["code"] == "unauthorized"
        await socket.type("echo $((6*7))\r")
        await socket.until_line(ANSWER)  # the first one is not disturbed

    code, _ = await refused(live_api, link)  # nor after it closed
    assert code == 4401
    page = await live_api.api.client.get(f"/terminal/{link.terminal_id}")
    assert_error(page, 404, "not_found")


async def test_a_wrong_token_is_refused_and_leaves_the_link_usable(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    code, error = await refused(live_api, link, token="x" * 32)
    assert code == 4401
    assert "used" in error["message"]

    async with ready_terminal(live_api, link) as socket:
        await socket.type("echo $((6*7))\r")
        await socket.until_line(ANSWER)


async def test_a_token_with_a_lone_surrogate_is_refused_with_4401(live_api: Live) -> None:
    # json.dumps escapes it ("\\ud800"); decoded, it is text UTF-8 cannot encode.
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    code, error = await refused(live_api, link, token="\ud800")
    assert (code, error["code"]) == (4401, "unauthorized")

    async with ready_terminal(live_api, link):  # the link was not spent
        pass


async def test_an_expired_link_is_refused(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    live_api.api.ctl.terminals.link_ttl_s = 0.3
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    await asyncio.sleep(0.5)

    page = await live_api.api.client.get(f"/terminal/{link.terminal_id}")
    assert_error(page, 404, "not_found")
    code, error = await refused(live_api, link)
    assert code == 4401
    assert "expired" in error["message"]


async def test_a_page_that_never_presents_its_token_is_refused(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with connect(link.socket_url(live_api)) as connection:
        await connection.send(json.dumps({"type": "resize", "cols": 80, "rows": 24}))
        assert await TerminalSocket(connection).until_closed() == 4401

    async with ready_terminal(live_api, link):  # the link was not spent
        pass


async def test_another_users_vm_is_404_and_an_admin_may_open_any(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    bob = live_api.api.headers(live_api.keys["bob"])

    answer = await live_api.api.client.post(f"/api/vms/{vm_id}/terminal", headers=bob)
    assert_error(answer, 404, "not_found")
    missing = await live_api.api.client.post("/api/vms/vm-nope/terminal", headers=bob)
    assert_error(missing, 404, "not_found")
    unauthenticated = await live_api.api.client.post(f"/api/vms/{vm_id}/terminal")
    assert_error(unauthenticated, 401, "unauthorized")

    async with ready_terminal(live_api, await open_link(live_api, vm_id)) as socket:
        await socket.type("echo $((6*7))\r")
        await socket.until_line(ANSWER)


async def test_a_vm_that_is_not_ready_or_a_browser_vm_is_409_naming_why(live_api: Live) -> None:
    client, ann = live_api.api.client, live_api.api.headers(live_api.keys["ann"])
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    # Without autoResume (with it, opening a terminal resumes the VM: test_api_lifetimes).
    no_auto = {"autoResume": False}
    assert (await client.patch(f"/api/vms/{vm_id}", json=no_auto, headers=ann)).is_success
    assert (await client.post(f"/api/vms/{vm_id}/pause", headers=ann)).status_code == 200

    paused = assert_error(
        await client.post(f"/api/vms/{vm_id}/terminal", headers=ann), 409, "conflict"
    )
    assert "paused" in paused["message"]
    code, error = await refused(live_api, link)  # a link minted before the pause
    assert code == 4409
    assert "paused" in error["message"]

    browser_id = await new_vm(live_api, "bob", "browser")
    bob = live_api.api.headers(live_api.keys["bob"])
    browser = assert_error(
        await client.post(f"/api/vms/{browser_id}/terminal", headers=bob), 409, "conflict"
    )
    assert "browser" in browser["message"]
    assert (await client.post(f"/api/vms/{vm_id}/resume", headers=ann)).status_code == 200


# --- nothing is left running --------------------------------------------------------------------


async def test_closing_the_socket_leaves_no_process_in_the_vm(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with ready_terminal(live_api, link) as socket:
        shell, job = await shell_pids(socket)
        assert not process_gone(shell)
        assert not process_gone(job)

    await until_gone(shell, job)
    agent = live_api.api.backend.agents[vm_id]  # type: ignore[attr-defined]
    # Logged by the agent's waiter thread once it has reaped the shell: maybe a moment later.
    async with asyncio.timeout(10):
        while not (ended := [r for r in agent.log_records() if r.get("event") == "exec_ended"]):
            await asyncio.sleep(0.05)
    assert [r["reason"] for r in ended] == ["killed"]


async def test_stopping_the_controller_ends_open_terminals(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])

    async with ready_terminal(live_api, link) as socket:
        shell, job = await shell_pids(socket)
        await live_api.api.ctl.terminals.close()
        assert await socket.until_closed() == 1000
        assert socket.statuses[-1]["code"] == "stopping"

    await until_gone(shell, job)


# --- the command line and the SDK -----------------------------------------------------------


def link_of(url: str, live: Live) -> Link:
    """A printed or returned absolute link, split as the page splits it."""
    assert url.startswith(f"{live.url}/terminal/term-"), url
    parts = urlsplit(url)
    token = parse_qs(parts.fragment)["token"][0]
    return Link(parts.path.rsplit("/", 1)[1], url, token, 60.0)


async def test_hearth_terminal_prints_a_link_that_opens_a_shell(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    env = {**os.environ, "HEARTH_URL": live_api.url, "HEARTH_API_KEY": live_api.keys["ann"]}
    command = await asyncio.create_subprocess_exec(
        *HEARTH, "terminal", vm_id, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await command.communicate()
    assert command.returncode == 0, err.decode()

    async with ready_terminal(live_api, link_of(out.decode().strip(), live_api)) as socket:
        await socket.type("echo $((6*7))\r")
        await socket.until_line(ANSWER)

    other = await asyncio.create_subprocess_exec(
        *HEARTH, "terminal", "vm-nope", env=env, stdout=PIPE, stderr=PIPE
    )
    _, err = await other.communicate()
    assert other.returncode == 1
    assert "vm-nope" in err.decode()


async def test_the_sdk_gives_a_terminal_url_sync_and_async(live_api: Live) -> None:
    vm_id = await new_vm(live_api, "ann")
    key = live_api.keys["ann"]

    async with AsyncHearth(live_api.url, key) as client:
        vm = await client.vms.get(vm_id)
        async_url = await vm.terminal_url()

    def sync_url() -> str:
        with Hearth(live_api.url, key) as client:
            return client.vms.get(vm_id).terminal_url()

    urls = [async_url, await asyncio.to_thread(sync_url)]
    assert urls[0] != urls[1]
    for url in urls:
        async with ready_terminal(live_api, link_of(url, live_api)) as socket:
            await socket.type("echo $((6*7))\r")
            await socket.until_line(ANSWER)


# --- the page --------------------------------------------------------------------------------


async def test_the_page_and_xterm_are_served_without_a_key(
    live_api: Live, xterm_installed: object
) -> None:
    vm_id = await new_vm(live_api, "ann")
    link = await open_link(live_api, vm_id, live_api.keys["ann"])
    async with httpx.AsyncClient(base_url=live_api.url) as browser:
        page = await browser.get(f"/terminal/{link.terminal_id}")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
            served = await browser.get(asset)
            assert served.status_code == 200, asset
        assert "/xterm/xterm/lib/xterm.js" in page.text
        # A page is no way in: the API still wants its key.
        assert (await browser.get("/api/vms")).status_code == 401


async def test_the_page_names_the_install_command_while_xterm_is_missing(
    terminal_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    settings = terminal_settings.with_overrides(cache_dir=tmp_path / "empty-cache")
    async with serving(settings, AgentBackend(agent_launcher), tmp_path) as live:
        vm_id = await new_vm(live, "ann")
        link = await open_link(live, vm_id, live.keys["ann"])

        page = await live.api.client.get(f"/terminal/{link.terminal_id}")

    error = assert_error(page, 503, "tool_missing")
    assert "-m hearth.terminal_page" in error["message"]
