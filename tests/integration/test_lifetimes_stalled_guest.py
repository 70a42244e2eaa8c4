"""VM lifetimes against a guest that stalls, in process on SQLite and PostgreSQL over the fake
backend: one VM's agent that holds every question about its commands (their ids its own, all
"running"), or one VM's action that does not end, holds up no other user's lifetime; and the
command ids kept per VM are capped.

The stalled guest is a stand-in agent on loopback that answers a command's start with an id of
its own and holds each ``GET /exec/{id}`` until the test releases it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socketserver
import sys
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hearth.config import Settings
from hearth.control import lifetimes as lifetimes_module
from hearth.control.lifetimes import KEEP_COMMANDS, PRUNE_COMMANDS_AT
from hearth.vm.types import Vm
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.integration.test_api_lifetimes import CHECK_S, new_vm, status_of, until
from tests.loopback_api import LOOPBACK, QuietHandler, listening

# Within this of its timeoutS another user's VM must be destroyed: well under the 10 s an
# agent's one unanswered question takes.
ON_TIME_S = 4.0
_JSON = {"content-type": "application/json"}


class _StalledGuest(socketserver.ThreadingMixIn, HTTPServer):
    """A guest's agent: every command it starts "runs", and each question about one is held
    until ``released`` (then: running). Counts the questions held at once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(LOOPBACK, _StalledAgentHandler)
        self.released = threading.Event()
        self.url = ""  # once it listens
        self.exec_ids = (f"held-{n}" for n in itertools.count())
        self._lock = threading.Lock()
        self.asking = 0
        self.most_asking = 0

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet about a question the controller gave up on (its connection closed)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def hold_question(self) -> None:
        """Hold a question until the guest is released, counted while it is held."""
        with self._lock:
            self.asking += 1
            self.most_asking = max(self.most_asking, self.asking)
        try:
            self.released.wait(60)
        finally:
            with self._lock:
                self.asking -= 1


class _StalledAgentHandler(QuietHandler):
    server: _StalledGuest

    def _ok(self, body: object) -> None:
        self.answer(200, json.dumps(body).encode(), _JSON)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.split("?")[0] == "/exec":
            self._ok({"exec_id": next(self.server.exec_ids), "pid": 1})
        else:
            self._ok({"status": "ok"})

    def do_GET(self) -> None:
        if self.path.startswith("/exec/"):
            self.server.hold_question()
            self._ok({"status": "running"})
        else:
            self._ok({"status": "ok", "version": "0.1.0"})


class _HeldPause(FakeBackend):
    """Fake VMs whose every pause waits for ``release``, as a VMM that does not answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def pause(self, vm: Vm) -> None:
        await self.release.wait()
        await super().pause(vm)


@pytest.fixture
def guest() -> Iterator[_StalledGuest]:
    """The stalled guest on loopback (released at the end, so nothing stays held)."""
    server = _StalledGuest()
    with listening(server) as url:
        server.url = url
        try:
            yield server
        finally:
            server.released.set()


@pytest.fixture
def lifetime_settings(api_settings: Settings) -> Settings:
    """Settings whose lifetime check comes round every ``CHECK_S``."""
    return api_settings.with_overrides(lifetime_check_interval_s=CHECK_S)


async def _start_commands(api: Api, vm_id: str, count: int) -> None:
    for _ in range(count):
        ran = await api.client.post(
            f"/api/vms/{vm_id}/exec?wait=false",
            json={"cmd": ["sleep", "600"]},
            headers=api.headers(),
        )
        assert ran.status_code == 202, ran.text


async def _destroyed_on_time(api: Api) -> None:
    """Create bob's VM (timeoutS 1, destroy) and see it destroyed within ``ON_TIME_S``."""
    bob = await new_vm(api, userId="bob", timeoutS=1, timeoutAction="destroy")

    async def destroyed() -> bool:
        return await status_of(api, bob["id"]) in ("stopping", "destroyed")

    await until(destroyed, timeout_s=ON_TIME_S)


@pytest.mark.parametrize(
    ("lifetime", "commands"),
    [
        # Past PRUNE_COMMANDS_AT the loop asked the agent about each command in turn, 10 s
        # each, inline: a guest answering slowly ("running", ids of its own) held every VM.
        ({}, PRUNE_COMMANDS_AT + 1),
        # An idle VM's agent is asked whether its command still runs: the loop waited for
        # that answer before it looked at any other VM.
        ({"idleTimeoutS": 1, "idleAction": "destroy"}, 1),
    ],
    ids=["pruning", "idle-check"],
)
async def test_a_guest_holding_its_command_answers_does_not_delay_another_users_lifetime(
    lifetime_settings: Settings,
    guest: _StalledGuest,
    tmp_path: Path,
    lifetime: dict[str, object],
    commands: int,
) -> None:
    async with running_api(lifetime_settings, FakeBackend(), tmp_path / "image") as api:
        mallory = await new_vm(api, userId="mallory", **lifetime)
        api.ctl.vms.live_vm(mallory["id"]).agent_url = guest.url
        await _start_commands(api, mallory["id"], commands)
        await _destroyed_on_time(api)
        assert guest.most_asking == 1  # one look at a time for the VM
        assert len(api.ctl.lifetimes._execs[mallory["id"]]) == commands  # all count as running
        assert await status_of(api, mallory["id"]) == "ready"
        guest.released.set()


async def test_a_vms_action_that_does_not_end_does_not_delay_another_users_lifetime(
    lifetime_settings: Settings, tmp_path: Path
) -> None:
    # The action (a pause, a hibernation's save, a destroy's pull-back) was awaited inline too.
    backend = _HeldPause()
    async with running_api(lifetime_settings, backend, tmp_path / "image") as api:
        mallory = await new_vm(api, userId="mallory", timeoutS=1, timeoutAction="pause")
        await _destroyed_on_time(api)
        assert await status_of(api, mallory["id"]) == "ready"  # its pause is still held
        backend.release.set()

        async def paused() -> bool:
            return await status_of(api, mallory["id"]) == "paused"

        await until(paused)


async def test_the_command_ids_kept_per_vm_are_capped_oldest_first(
    api_settings: Settings, tmp_path: Path
) -> None:
    # Ids are the guest's own and its agent may say they all run: each was kept for as long as
    # the VM ran. Past KEEP_COMMANDS the oldest goes, logged.
    async with running_api(api_settings, FakeBackend(), tmp_path / "image") as api:
        vm = await new_vm(api)
        lifetimes = api.ctl.lifetimes
        with capture_logs() as logs:
            for n in range(KEEP_COMMANDS + 5):
                lifetimes.started_exec(vm["id"], f"id-{n}")
        kept = lifetimes._execs[vm["id"]]
        assert len(kept) == KEEP_COMMANDS
        assert list(kept)[:2] == ["id-5", "id-6"]
        assert f"id-{KEEP_COMMANDS + 4}" in kept
        forgotten = [log for log in logs if log["event"] == "vm_commands_forgotten"]
        assert len(forgotten) == 5
        assert forgotten[0]["vm_id"] == vm["id"]


class _CountedPause(FakeBackend):
    """Pauses that take a while, counted: how many ran at once at most."""

    def __init__(self) -> None:
        super().__init__()
        self.pausing = self.most = 0

    async def pause(self, vm: Vm) -> None:
        self.pausing += 1
        self.most = max(self.most, self.pausing)
        try:
            await asyncio.sleep(0.3)
            await super().pause(vm)
        finally:
            self.pausing -= 1


async def test_vms_due_together_take_turns_and_all_end(
    lifetime_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many VMs' time up together (a batch made at once, a controller back after downtime):
    # their actions run at most ENDS_AT_ONCE at a time, and every one of them ends.
    monkeypatch.setattr(lifetimes_module, "ENDS_AT_ONCE", 2)
    backend = _CountedPause()
    async with running_api(lifetime_settings, backend, tmp_path / "image") as api:
        ids = [
            (await new_vm(api, userId=f"u{n}", timeoutS=1, timeoutAction="pause"))["id"]
            for n in range(5)
        ]

        async def all_paused() -> bool:
            return all([await status_of(api, vm_id) == "paused" for vm_id in ids])

        await until(all_paused, timeout_s=30)
    assert backend.most == 2
