"""The Python SDK (``hearth.sdk``) against the real API, sync and async.

The async client reaches the app in process through ``httpx.ASGITransport``; the sync client,
and every test of a dropped stream, go over real HTTP to uvicorn on loopback (the sdk fixtures),
the drops through a proxy that aborts the connection mid-body. Every VM runs a real agent, so
every command really runs. Logins run the real flow against the test OAuth server.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.sdk import (
    AsyncHearth,
    AsyncVm,
    AuthSession,
    AuthStatus,
    ExecEvent,
    ExecExit,
    ExecFailed,
    ExecOutput,
    ExecStarted,
    Hearth,
    HearthApiError,
    HearthConnectionError,
    ResumePolicy,
    Vm,
    VmStatus,
    WaitTimeout,
)
from hearth.vm.host import free_local_port
from tests.agent_backend import AgentBackend
from tests.background import in_background_loop
from tests.integration.api_fixtures import BASE_URL, Api, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer, SignInBrowser
from tests.integration.sdk_fixtures import *  # noqa: F403
from tests.integration.sdk_fixtures import Live, serving

README = Path(__file__).resolve().parents[2] / "README.md"
_EXAMPLE = re.compile(
    r"<!-- sdk-example -->\s*```python\n(?P<code>.*?)```\s*<!-- /sdk-example -->", re.S
)
LOGIN_DEADLINE_S = 30.0


def counting(lines: int, pause_s: float = 0.1) -> list[str]:
    """A command printing ``line1`` … ``line<lines>``, ``pause_s`` apart."""
    return ["sh", "-c", f"for i in $(seq 1 {lines}); do echo line$i; sleep {pause_s}; done"]


def counted(lines: int) -> bytes:
    """What ``counting(lines)`` prints."""
    return b"".join(b"line%d\n" % i for i in range(1, lines + 1))


def written(events: list[ExecEvent], stream: str) -> bytes:
    """The bytes of every ``stream`` chunk, in order."""
    return b"".join(e.data for e in events if isinstance(e, ExecOutput) and e.stream == stream)


def assert_well_formed(events: list[ExecEvent]) -> ExecExit:
    """``started`` first (id 0), ``exit`` last and only there, ids strictly rising; the exit."""
    assert isinstance(events[0], ExecStarted), events
    assert events[0].id == 0
    assert events[0].pid > 0
    assert isinstance(events[-1], ExecExit), events
    assert not any(isinstance(e, ExecStarted | ExecExit) for e in events[1:-1]), events
    ids = [e.id for e in events]
    assert all(isinstance(i, int) for i in ids), ids
    assert ids == sorted(set(ids)), ids
    return events[-1]


@pytest.fixture
def ann(live: Live) -> Iterator[Hearth]:
    """ann's sync client, straight to the served API."""
    with Hearth(live.url, live.keys["ann"]) as client:
        yield client


# --- VMs ---------------------------------------------------------------------------------------


def test_sync_client_creates_lists_gets_pauses_resumes_and_destroys_a_vm(ann: Hearth) -> None:
    vm = ann.vms.create("cli")

    assert isinstance(vm, Vm)
    assert (vm.status, vm.vm_type, vm.user_id) == (VmStatus.READY, "cli", "ann")
    assert isinstance(vm.created_at, datetime)
    assert vm.vcpus >= 1
    assert vm.agent_token  # shown in the answer that created it only
    assert [listed.id for listed in ann.vms.list()] == [vm.id]
    got = ann.vms.get(vm.id)
    assert (got.id, got.status, got.agent_token) == (vm.id, "ready", None)
    assert vm.pause() is vm
    assert vm.status == VmStatus.PAUSED
    assert vm.resume().status == "ready"
    assert vm.set_lifetime(timeout_s=3600, idle_action="destroy") is vm
    assert (vm.timeout_s, vm.idle_action, vm.idle_timeout_s) == (3600, "destroy", None)
    assert vm.set_lifetime(timeout_s=None).timeout_s is None
    with pytest.raises(TypeError, match="not lifetime fields: lifetime_s"):
        vm.set_lifetime(lifetime_s=5)
    assert vm.destroy().status == "destroyed"
    assert isinstance(vm.destroyed_at, datetime)
    assert vm.refresh().status == "destroyed"
    assert vm.agent_token  # a refresh keeps what only the creation showed
    assert vm.destroy().status == "destroyed"  # again: harmless


def test_api_errors_raise_hearth_api_error_with_the_apis_status_and_code(live: Live) -> None:
    with Hearth(live.url, live.keys["ann"]) as ann, Hearth(live.url, live.keys["bob"]) as bob:
        vm = ann.vms.create()
        with pytest.raises(HearthApiError) as hidden:
            bob.vms.get(vm.id)
        assert (hidden.value.status, hidden.value.code) == (404, "not_found")
        assert vm.id in hidden.value.message
        with pytest.raises(HearthApiError) as refused:
            bob.vms.create(user_id="ann")
        assert (refused.value.status, refused.value.code) == (403, "forbidden")
        with pytest.raises(HearthApiError) as invalid:
            vm.exec(["true"], cwd="/no/such/dir")
        assert (invalid.value.status, invalid.value.code) == (422, "invalid_input")
        with pytest.raises(TypeError, match="argv"):
            vm.exec("ls -l")  # type: ignore[arg-type]
        vm.destroy()
    with Hearth(live.url, "not-a-key") as stranger, pytest.raises(HearthApiError) as denied:
        stranger.vms.list()
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    nowhere = f"http://127.0.0.1:{free_local_port()}"
    with Hearth(nowhere, "k") as client, pytest.raises(HearthConnectionError) as unreachable:
        client.vms.list()
    assert unreachable.value.code == "unreachable"


# --- commands ----------------------------------------------------------------------------------


def test_sync_exec_returns_what_the_command_wrote_and_how_it_ended(ann: Hearth) -> None:
    vm = ann.vms.create()

    result = vm.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])

    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert (result.exit_code, result.signal, result.reason) == (3, None, "exited")
    assert result.duration_ms >= 0
    assert result.exec_id
    with pytest.raises(ExecFailed) as failed:
        result.check()
    assert failed.value.result is result
    script = 'cat; echo "$GREETING"; pwd'
    fed = vm.exec(["sh", "-c", script], stdin="fed\n", env={"GREETING": "hi"}, cwd="/tmp")
    assert fed.check().stdout == b"fed\nhi\n/tmp\n"
    binary = vm.exec(["python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"])
    assert binary.stdout == bytes(range(256))
    slept = vm.exec(["sleep", "30"], timeout_s=1)
    assert (slept.reason, slept.ok) == ("timeout", False)


def test_sync_exec_stream_yields_started_then_output_in_order_then_exit(ann: Hearth) -> None:
    vm = ann.vms.create()
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 2"

    events = list(vm.exec_stream(["sh", "-c", script]))

    ended = assert_well_formed(events)
    assert (ended.code, ended.signal, ended.reason) == (2, None, "exited")
    assert written(events, "stdout") == b"out1\nout2\nout3\n"
    assert written(events, "stderr") == b"err1\nerr2\nerr3\n"


def test_sync_exec_stream_resumes_after_a_dropped_connection_losing_nothing(
    live: Live, ann: Hearth
) -> None:
    vm_id = ann.vms.create().id
    with Hearth(live.proxy_url, live.keys["ann"]) as through_proxy:
        vm = through_proxy.vms.get(vm_id)
        live.proxy.cut_after(4)  # started and three chunks, then the connection is aborted
        events = list(vm.exec_stream(counting(12)))

    assert live.proxy.cuts_done == 1
    assert_well_formed(events)
    assert written(events, "stdout") == counted(12)
    before_cut = events[3].id
    resumes = [head.lower() for head in live.proxy.heads if b"/events" in head]
    assert len(resumes) == 1, resumes
    assert f"last-event-id: {before_cut}\r\n".encode() in resumes[0]


def test_sync_exec_stream_gives_up_after_max_resumes_breaks_in_a_row(
    live: Live, ann: Hearth
) -> None:
    vm_id = ann.vms.create().id
    policy = ResumePolicy(max_resumes=2, first_delay_s=0.01)
    with Hearth(live.proxy_url, live.keys["ann"], resume=policy) as through_proxy:
        vm = through_proxy.vms.get(vm_id)
        # After ``started``; then each resume before its first byte.
        live.proxy.cut_after(1, 0, 0)
        seen: list[ExecEvent] = []
        with pytest.raises(HearthConnectionError) as broken:
            seen.extend(vm.exec_stream(["sh", "-c", "sleep 2; echo late"]))

    assert broken.value.code == "stream_broken"
    assert live.proxy.cuts_done == 3
    assert [type(e) for e in seen] == [ExecStarted]


async def test_a_start_whose_answer_was_lost_is_outcome_unknown_in_both_clients(
    live: Live, ann: Hearth
) -> None:
    # The request went out and did its work; only its answer was cut off. "unreachable" would
    # tell the caller nothing ran, and a retry would run it twice.
    vm_id = ann.vms.create().id
    mark = ["sh", "-c", "echo ran >> ran"]
    with Hearth(live.proxy_url, live.keys["ann"]) as client:
        vm = client.vms.get(vm_id)
        live.proxy.cut_after(0)  # the next answer through the proxy (the POST's) is cut off
        with pytest.raises(HearthConnectionError) as started:
            vm.exec(mark)
        live.proxy.cut_after(0)
        with pytest.raises(HearthConnectionError) as paused:
            vm.pause()
    assert ann.vms.get(vm_id).status == "paused"
    ann.vms.get(vm_id).resume()
    async with AsyncHearth(live.proxy_url, live.keys["ann"]) as aclient:
        avm = await aclient.vms.get(vm_id)
        live.proxy.cut_after(0)
        with pytest.raises(HearthConnectionError) as astarted:
            await avm.exec(mark)
        live.proxy.cut_after(0)
        with pytest.raises(HearthConnectionError) as apaused:
            await avm.pause()

    assert live.proxy.cuts_done == 4
    codes = [e.value.code for e in (started, paused, astarted, apaused)]
    assert codes == ["outcome_unknown"] * 4
    assert ann.vms.get(vm_id).resume().exec(["cat", "ran"]).check().stdout == b"ran\nran\n"


async def test_kill_exec_ends_a_running_command_in_both_clients(live: Live, ann: Hearth) -> None:
    vm = ann.vms.create()
    events = vm.exec_stream(["sleep", "300"])
    started = next(events)
    assert isinstance(started, ExecStarted)
    assert vm.kill_exec(started.exec_id) is True
    ended = assert_well_formed([started, *events])
    assert (ended.signal, ended.reason) == ("SIGKILL", "killed")
    assert vm.kill_exec(started.exec_id) is False  # it had ended already
    async with AsyncHearth(live.url, live.keys["ann"]) as client:
        avm = await client.vms.get(vm.id)
        aevents = avm.exec_stream(["sleep", "300"])
        astarted = await anext(aevents)
        assert isinstance(astarted, ExecStarted)
        assert await avm.kill_exec(astarted.exec_id, "SIGTERM") is True
        aended = assert_well_formed([astarted, *[e async for e in aevents]])
    assert (aended.signal, aended.reason) == ("SIGTERM", "killed")


def test_the_readme_example_runs_unmodified(live: Live) -> None:
    found = _EXAMPLE.search(README.read_text(encoding="utf-8"))
    assert found, "README.md lacks the sdk-example block"
    env = {**os.environ, "HEARTH_URL": live.url, "HEARTH_API_KEY": live.keys["ann"]}

    done = subprocess.run(
        [sys.executable, "-c", found["code"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    greeting, ending = done.stdout.splitlines()
    assert greeting == f"hello from {os.uname().sysname}"
    assert re.fullmatch(r"exit code 0 after \d+ ms", ending), ending
    with Hearth(live.url, live.keys["ann"]) as ann:
        assert ann.vms.list() == []  # the example destroyed its VM: no longer listed
        assert [vm.status for vm in ann.vms.list(status=["destroyed"])] == ["destroyed"]


# --- the async client --------------------------------------------------------------------------


async def test_async_client_manages_vms_and_runs_commands_in_process(inproc: Api) -> None:
    transport = httpx.ASGITransport(app=inproc.app)
    keys = {user: await inproc.user_key(user) for user in ("ann", "bob")}
    async with (
        AsyncHearth(BASE_URL, keys["ann"], transport=transport) as ann,
        AsyncHearth(BASE_URL, keys["bob"], transport=transport) as bob,
    ):
        vm = await ann.vms.create("cli")
        assert isinstance(vm, AsyncVm)
        assert (vm.status, vm.user_id) == ("ready", "ann")
        assert [listed.id for listed in await ann.vms.list()] == [vm.id]
        assert (await ann.vms.get(vm.id)).status == "ready"
        with pytest.raises(HearthApiError) as hidden:
            await bob.vms.get(vm.id)
        assert (hidden.value.status, hidden.value.code) == (404, "not_found")

        result = await vm.exec(["sh", "-c", "echo out; echo err >&2; exit 4"])
        assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 4)
        script = "for i in 1 2; do echo out$i; echo err$i >&2; done"
        events = [event async for event in vm.exec_stream(["sh", "-c", script])]
        assert assert_well_formed(events).code == 0
        assert (written(events, "stdout"), written(events, "stderr")) == (
            b"out1\nout2\n",
            b"err1\nerr2\n",
        )

        assert (await vm.pause()).status == "paused"
        assert (await vm.resume()).status == "ready"
        assert (await vm.set_lifetime(idle_timeout_s=600)).idle_timeout_s == 600
        assert (await vm.destroy()).status == "destroyed"
        timed = await ann.vms.create("cli", lifetime={"timeout_s": 60, "auto_resume": False})
        assert (timed.timeout_s, timed.auto_resume) == (60, False)
        await timed.destroy()
        assert (await vm.refresh()).status == "destroyed"


async def test_async_exec_resumes_after_a_dropped_connection_losing_nothing(live: Live) -> None:
    async with AsyncHearth(live.url, live.keys["ann"]) as direct:
        vm_id = (await direct.vms.create()).id
    async with AsyncHearth(live.proxy_url, live.keys["ann"]) as through_proxy:
        vm = await through_proxy.vms.get(vm_id)
        live.proxy.cut_after(4)
        result = await vm.exec(counting(12))

    assert live.proxy.cuts_done == 1
    assert result.check().stdout == counted(12)


# --- logins ------------------------------------------------------------------------------------


@pytest.fixture
def login_settings(sdk_settings: Settings, oidc_server: OidcServer) -> Settings:
    """Logins against the test OAuth server: no egress proxy, short deadlines."""
    return sdk_settings.with_overrides(
        oidc_issuer=oidc_server.issuer,
        oidc_client_id=oidc_server.client_id,
        oidc_callback_port=free_local_port(),
        login_egress="off",
        login_timeout_s=20.0,
        cli_vm_timeout_s=15.0,
        browser_vm_timeout_s=15.0,
    )


def awaiting_user(session: AuthSession) -> AuthSession:
    """The session once the login page is up (fails if it ends first)."""
    deadline = time.monotonic() + LOGIN_DEADLINE_S
    while session.refresh().status != AuthStatus.AWAITING_USER:
        assert not session.ended, session
        assert time.monotonic() < deadline, session
        time.sleep(0.05)
    return session


def test_sync_auth_start_cancel_and_wait(
    login_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    backend = AgentBackend(agent_launcher)
    with (
        in_background_loop(lambda: serving(login_settings, backend, tmp_path), timeout_s=60) as api,
        Hearth(api.url, api.keys["ann"]) as client,
    ):
        session = client.auth.start("ann", "oidc")
        assert isinstance(session, AuthSession)
        assert (session.provider, session.user_id, session.ended) == ("oidc", "ann", False)
        assert session.view_url
        awaiting_user(session)
        assert session.login_url
        with pytest.raises(WaitTimeout):
            session.wait(timeout_s=0.3, interval_s=0.1)

        assert session.cancel() is session
        assert (session.status, session.error_message) == ("cancelled", "cancelled by request")
        assert session.wait(timeout_s=5).status == AuthStatus.CANCELLED
        assert session.ended
        assert session.view_url  # kept: the API shows it only when the session starts
        assert client.auth.get(session.id).status == "cancelled"
        assert session.id in [s.id for s in client.auth.list()]


async def test_async_auth_wait_returns_the_completed_session_once_the_user_signed_in(
    login_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    async with running_api(login_settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        key = await api.user_key("ann")
        async with AsyncHearth(BASE_URL, key, transport=httpx.ASGITransport(app=api.app)) as ann:
            session = await ann.auth.start(None, "oidc")
            deadline = time.monotonic() + LOGIN_DEADLINE_S
            while (await session.refresh()).status != AuthStatus.AWAITING_USER:
                assert not session.ended, session
                assert time.monotonic() < deadline, session
                await asyncio.sleep(0.05)
            assert session.login_url
            await asyncio.to_thread(sign_in, session.login_url)

            final = await session.wait(timeout_s=LOGIN_DEADLINE_S, interval_s=0.1)

            assert final is session
            assert (final.status, final.error_message) == (AuthStatus.COMPLETED, None)
            assert final.user_id == "ann"
            assert final.vm_id
            assert isinstance(final.completed_at, datetime)


def sign_in(authorize_url: str) -> None:
    """The user signs in at ``authorize_url`` and consents."""
    with SignInBrowser() as browser:
        landing = browser.consent(browser.sign_in(authorize_url))
    assert "You can close this window" in landing.text
