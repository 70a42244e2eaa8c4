"""Auth flows that race: three users at once, and a cancel racing the Browser VM's boot.

The three sessions are started together through the API and the three users sign in together
(each typing into the login page of their own Browser VM); each ends with its own credentials in
its own CLI VM. Three Browser VMs (``-smp 2`` each, TCG) share this host's two cores, so every
stage deadline of the test's controller is raised well above the product defaults; the wall time
is printed, never asserted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.bench.signin import submit_consent
from hearth.images.manifest import ImageDir
from hearth.vm.types import Vm, VmSpec, VmType
from tests.e2e.flow_fixtures import *  # noqa: F403
from tests.e2e.flow_fixtures import E2eOidc, auth_controller_for
from tests.e2e.test_auth_flow import session_of, sign_in, start, wait_status
from tests.vm.api_fixtures import Api
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.conftest import qemu_pids_under

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.timeout(1800)]

USERS = ("ann", "ben", "cat")
# Per stage, for three flows sharing two cores under TCG (product defaults: 300 s to 600 s).
STAGE_TIMEOUT_S = 900.0
PAGE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FlowResult:
    """One user's finished flow, with when (seconds after the starts) it reached each stage."""

    user: str
    session: dict[str, Any]
    browser_vm_id: str
    awaiting_user_s: float
    completed_s: float


async def sign_in_and_finish(
    api: Api, oidc: E2eOidc, user: str, session_id: str, started: float
) -> FlowResult:
    """Play one user: wait for the login page, sign in, consent, wait for the delivery."""
    waiting = await wait_status(api, session_id, ("awaiting_user",), timeout_s=STAGE_TIMEOUT_S)
    awaiting_user_s = time.monotonic() - started
    assert waiting["login_url"].startswith(oidc.issuer)
    browser_vm_id: str = waiting["browser_vm_id"]
    page = await sign_in(api, browser_vm_id, oidc.issuer, "wonderland", timeout_s=PAGE_TIMEOUT_S)
    try:
        await submit_consent(page, timeout_s=PAGE_TIMEOUT_S)
    finally:
        await page.close()
    done = await wait_status(api, session_id, ("completed",), timeout_s=STAGE_TIMEOUT_S)
    return FlowResult(
        user=user,
        session=done,
        browser_vm_id=browser_vm_id,
        awaiting_user_s=awaiting_user_s,
        completed_s=time.monotonic() - started,
    )


async def report_sessions(api: Api, session_ids: dict[str, str]) -> None:
    """Print each session and its VMs' console tails (called when the flows fail)."""
    for user, session_id in session_ids.items():
        session = await session_of(api, session_id)
        print(f"--- {user}: {session['status']} {session['error_message']!r}")
        for vm_id in (session["vm_id"], session["browser_vm_id"]):
            if vm_id and vm_id in api.ctl.vms.live:
                tail = api.ctl.node.backend.console_tail(api.ctl.vms.live[vm_id], 30)
                print(f"--- console of {vm_id} ---\n{tail}")


async def test_three_users_log_in_at_once_and_each_gets_their_own_credentials(
    minimal_image: ImageDir,
    browser_image: ImageDir,
    vm_state_dir: Path,
    e2e_oidc: E2eOidc,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    async for api in auth_controller_for(
        database_url=None,
        state=tmp_path / "state",
        minimal_image=minimal_image,
        browser_image=browser_image,
        template_dir=vm_state_dir / "templates",
        oidc=e2e_oidc,
        login_timeout_s=STAGE_TIMEOUT_S,
        cli_vm_timeout_s=STAGE_TIMEOUT_S,
        browser_vm_timeout_s=STAGE_TIMEOUT_S,
    ):
        # Restores of three Browser VMs (≈ 640 MiB of state each) at once take longer than one.
        api.ctl.node.backend.restore_deadline_s = 300
        api.ctl.node.backend.cold_deadline_s = 900

        started = time.monotonic()
        session_ids = dict(
            zip(USERS, await asyncio.gather(*(start(api, u) for u in USERS)), strict=True)
        )
        assert len(set(session_ids.values())) == len(USERS)
        try:
            results = await asyncio.gather(
                *(
                    sign_in_and_finish(api, e2e_oidc, user, sid, started)
                    for user, sid in session_ids.items()
                )
            )
        except BaseException:
            await report_sessions(api, session_ids)
            raise
        wall_s = time.monotonic() - started
        logged = capfd.readouterr()
        logged_text = logged.out + logged.err
        with capfd.disabled():
            print(f"\nthree concurrent auth flows: {wall_s:.1f} s wall time")
            for result in results:
                print(
                    f"  {result.user}: awaiting_user after {result.awaiting_user_s:.1f} s, "
                    f"completed after {result.completed_s:.1f} s"
                )
            fallbacks = logged_text.count("restore_failed_cold_boot_instead")
            print(f"  restores that fell back to a cold boot: {fallbacks}")

        cli_vm_ids = [r.session["vm_id"] for r in results]
        assert len(set(cli_vm_ids)) == len(USERS), f"CLI VMs shared: {cli_vm_ids}"
        assert len({r.browser_vm_id for r in results}) == len(USERS)

        secrets: list[str] = []
        delivered: set[str] = set()
        boot_modes: dict[str, tuple[str, str]] = {}
        async with api.client() as admin:
            for result in results:
                user, cli_vm_id = result.user, result.session["vm_id"]
                assert result.session["status"] == "completed"
                assert result.session["completed_at"] is not None
                cli_vm = (await admin.get(f"/api/vms/{cli_vm_id}")).json()
                assert cli_vm["userId"] == user, cli_vm

                # The document is in this user's own CLI VM, written with mode 0600.
                token = api.ctl.vms.agent_token(cli_vm_id)
                url = api.ctl.vms.live[cli_vm_id].agent_url
                headers = {"Authorization": f"Bearer {token}"}
                async with httpx.AsyncClient(headers=headers) as agent:
                    meta = (await agent.get(f"{url}/credentials/oidc")).json()
                    got = await agent.get(f"{url}/credentials/oidc?content=true")
                    document = got.json()["document"]
                assert meta["present"] is True
                assert meta["mode"] == "0600"
                facts = (await admin.get(f"/api/credentials/{user}")).json()["credentials"]
                oidc_facts = next(f for f in facts if f["provider"] == "oidc")
                assert oidc_facts["present"] is True
                assert oidc_facts["sha256"] == meta["sha256"]
                assert oidc_facts["delivered_to"] == cli_vm_id
                delivered.add(meta["sha256"])
                secrets += [document["access_token"], document["refresh_token"]]

                # The user's Browser VM is gone, process and all.
                browser_vm = (await admin.get(f"/api/vms/{result.browser_vm_id}")).json()
                assert browser_vm["status"] == "destroyed"
                boot_modes[user] = (cli_vm["bootMode"], browser_vm["bootMode"])
                vm_dir = api.settings.state_dir / "vms" / result.browser_vm_id
                assert qemu_pids_under(vm_dir) == []
        assert len(delivered) == len(USERS), "two users were given the same document"
        with capfd.disabled():
            print(f"  boot modes (CLI VM, Browser VM): {boot_modes}")

        # No token in the database file or in anything the controller logged.
        database = (api.settings.state_dir / "hearth.db").read_bytes()
        wal = api.settings.state_dir / "hearth.db-wal"
        if wal.exists():
            database += wal.read_bytes()
        for secret in secrets:
            assert secret.encode() not in database
            assert secret not in logged_text


async def test_cancel_while_the_browser_vm_boots_leaves_no_browser_vm(
    auth_controller: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = auth_controller
    # Hold the Browser VM's boot until the cancel is in, so the cancel surely races it.
    backend = api.ctl.node.backend
    real_create = backend.create
    booting, release = asyncio.Event(), asyncio.Event()

    async def held_create(image: ImageDir, spec: VmSpec, **options: Any) -> Vm:
        if spec.vm_type is VmType.BROWSER:
            booting.set()
            await release.wait()
        return await real_create(image, spec, **options)

    monkeypatch.setattr(backend, "create", held_create)
    session_id = await start(api, "dan")
    # The Browser VM's row exists and its boot has begun (a cancel before that point is a
    # create cancelled during admission, which leaves no row: tests/integration covers it).
    await asyncio.wait_for(booting.wait(), timeout=STAGE_TIMEOUT_S)
    while (await session_of(api, session_id))["browser_vm_id"] is None:
        await asyncio.sleep(0.05)  # the session records its Browser VM as the boot begins
    async with api.client() as admin:
        cancelled = await admin.post(f"/api/auth/session/{session_id}/cancel")
    assert cancelled.json()["session"]["status"] == "cancelled"

    # The boot goes on after the cancel; once it is over, nothing of that Browser VM runs.
    release.set()
    await api.ctl.vms.wait_idle()
    async with api.client() as admin:
        listed = await admin.get("/api/vms", params={"status": "destroyed,failed"})
        vms = listed.json()["vms"]
    browsers = [vm for vm in vms if vm["userId"] == "dan" and vm["vmType"] == "browser"]
    assert len(browsers) == 1, browsers
    assert browsers[0]["status"] in ("destroyed", "failed"), browsers[0]
    assert qemu_pids_under(api.settings.state_dir / "vms" / browsers[0]["id"]) == []
    assert (await session_of(api, session_id))["browser_vm_id"] == browsers[0]["id"]
