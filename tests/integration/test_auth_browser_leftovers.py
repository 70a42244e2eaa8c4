"""Browser VMs a login leaves behind, in process (real controller, store, OAuth server and agents,
fake VMs): a destroy that fails is tried again, and said on the session when it keeps failing;
a Browser VM a login admitted but never recorded on its session (the controller stopped in
between) is destroyed at the next start; the users' own Browser VMs are not.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.control.quotas import Quotas
from hearth.errors import VmError
from hearth.store import Store, VmRecord
from hearth.vm.types import VmState, VmType
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import DEFAULT_QUOTAS
from tests.integration.login_fixtures import *  # noqa: F403
from tests.integration.login_fixtures import TERMINAL, USER, WAIT_DEADLINE_S, Login
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import *  # noqa: F403

# --- a destroy that fails ---------------------------------------------------------------------


def failing_destroys(login: Login, monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """The controller's VM destroys fail ``times`` times for Browser VMs (as a VMM that does
    not stop would), then go through; the ids of the failed attempts."""
    vms = login.api.ctl.vms
    real = vms.destroy
    failed: list[str] = []

    async def destroy(vm_id: str, **kwargs: Any) -> VmRecord:
        record = await vms.get(vm_id, include_pooled=True)
        if record.vm_type is VmType.BROWSER and len(failed) < times:
            failed.append(vm_id)
            raise VmError("the VMM did not stop")
        return await real(vm_id, **kwargs)

    monkeypatch.setattr(vms, "destroy", destroy)
    return failed


async def test_a_browser_vm_whose_destroy_fails_once_is_destroyed_by_the_next_try(
    login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed destroy was only logged: the Browser VM ran on after its login was cancelled.
    session_id = await login.start()
    await login.wait_for(session_id, {"awaiting_user"})
    failed = failing_destroys(login, monkeypatch, times=2)

    cancelled = await login.cancel(session_id)

    login.assert_browser_vm_gone(cancelled)
    login.assert_only_cli_vm_left(cancelled)
    assert failed == [cancelled["browser_vm_id"]] * 2
    assert (cancelled["status"], cancelled["error_message"]) == (
        "cancelled",
        "cancelled by request",
    )


async def test_a_browser_vm_that_cannot_be_destroyed_is_said_on_its_session_and_goes_at_restart(
    flow_settings: Settings,
    vm_backend: AgentBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = tmp_path / "image"
    async with Login.running(flow_settings, vm_backend, images) as login:
        session_id = await login.start()
        await login.wait_for(session_id, {"awaiting_user"})
        failing_destroys(login, monkeypatch, times=1000)

        cancelled = await login.cancel(session_id)

        browser_id = cancelled["browser_vm_id"]
        assert cancelled["status"] == "cancelled"
        assert cancelled["error_message"] == (
            f"cancelled by request; its Browser VM {browser_id} could not be destroyed (the VMM "
            "did not stop); the controller's next start destroys it"
        )
        assert browser_id in vm_backend.running
    async with Login.running(flow_settings, vm_backend, images) as second:
        assert (await second.api.ctl.store.vms.get(browser_id)).status is VmState.DESTROYED
        second.assert_browser_vm_gone(cancelled)


# --- a Browser VM never recorded on its session -----------------------------------------------


async def unrecorded_browser_vm(
    settings: Settings, backend: AgentBackend, images: Path, quotas: Quotas = DEFAULT_QUOTAS
) -> tuple[str, str]:
    """A login whose Browser VM was admitted and booted while its CLI VM was still booting, by
    a controller that then stopped, and whose session does not name that VM (as if the
    controller had stopped before it recorded it): the session's id and the VM's."""
    backend.hold, backend.hold_type = asyncio.Event(), VmType.CLI
    async with Login.running(settings, backend, images, quotas=quotas) as first:
        session_id = await first.start()
        async with asyncio.timeout(WAIT_DEADLINE_S):
            while True:
                browser_id = (await first.session(session_id))["browser_vm_id"]
                if browser_id is not None:
                    vm = await first.api.ctl.store.vms.get(browser_id)
                    if vm.status is VmState.READY:
                        break
                await asyncio.sleep(0.05)
    backend.hold = None
    store = await Store.open(settings.database_url)
    try:
        await store.auth_sessions.update(session_id, browser_vm_id=None)
    finally:
        await store.close()
    assert browser_id in backend.running
    return session_id, browser_id


async def test_a_browser_vm_a_login_never_recorded_goes_at_the_restart_and_the_login_goes_on(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    # recover() destroyed only the Browser VMs named by ended sessions: this one ran on for
    # good, and held the user's one Browser VM, so the resumed login failed on the quota.
    images = tmp_path / "image"
    session_id, orphan = await unrecorded_browser_vm(flow_settings, vm_backend, images)

    async with Login.running(flow_settings, vm_backend, images) as second:
        assert (await second.api.ctl.store.vms.get(orphan)).status is VmState.DESTROYED
        assert orphan not in vm_backend.running
        done = await second.signed_in(session_id)
        assert (done["status"], done["error_message"]) == ("completed", None)
        assert done["browser_vm_id"] != orphan
        second.assert_only_cli_vm_left(done)


ROOMY = dataclasses.replace(
    DEFAULT_QUOTAS, per_user={VmType.CLI: 2, VmType.BROWSER: 2}, max_browser_vms=5
)


async def test_the_restart_leaves_the_users_own_browser_vms_alone(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    # A Browser VM a user made through the API is theirs, even one made by the user whose login
    # left one unrecorded, before that login began. (The warm pool's are never listed here: their
    # rows are the pool's, not a user's.)
    images = tmp_path / "image"
    async with Login.running(flow_settings, vm_backend, images, quotas=ROOMY) as first:
        owned = []
        for user in (USER, "bob"):
            made = await first.api.client.post(
                "/api/vms", json={"userId": user, "vmType": "browser"}, headers=first.api.headers()
            )
            assert made.status_code == 201, made.text
            owned.append(made.json()["id"])
    session_id, orphan = await unrecorded_browser_vm(flow_settings, vm_backend, images, ROOMY)

    async with Login.running(flow_settings, vm_backend, images, quotas=ROOMY) as second:
        store = second.api.ctl.store
        assert (await store.vms.get(orphan)).status is VmState.DESTROYED
        for vm_id in owned:
            assert (await store.vms.get(vm_id)).status is VmState.READY, vm_id
            assert vm_id in vm_backend.running
        ended = await second.cancel(session_id)
        assert ended["status"] in TERMINAL


async def test_a_browser_vm_the_user_made_during_a_login_that_recorded_its_own_stays(
    flow_settings: Settings, vm_backend: AgentBackend, tmp_path: Path
) -> None:
    # Only a login that never recorded its Browser VM can have left one unrecorded: a Browser VM
    # the user made meanwhile, beside a login that did record its own, is the user's.
    images = tmp_path / "image"
    vm_backend.hold, vm_backend.hold_type = asyncio.Event(), VmType.CLI
    async with Login.running(flow_settings, vm_backend, images, quotas=ROOMY) as first:
        session_id = await first.start()
        async with asyncio.timeout(WAIT_DEADLINE_S):
            while (await first.session(session_id))["browser_vm_id"] is None:
                await asyncio.sleep(0.05)
        made = await first.api.client.post(
            "/api/vms", json={"userId": USER, "vmType": "browser"}, headers=first.api.headers()
        )
        assert made.status_code == 201, made.text
        owned = made.json()["id"]
    vm_backend.hold = None

    async with Login.running(flow_settings, vm_backend, images, quotas=ROOMY) as second:
        assert (await second.api.ctl.store.vms.get(owned)).status is VmState.READY
        assert owned in vm_backend.running
        ended = await second.cancel(session_id)
        assert ended["status"] in TERMINAL
