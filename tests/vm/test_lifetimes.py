"""Lifetimes on a real CLI VM: left idle, its QEMU is paused (its agent stops answering); the
next command resumes it first, and what the guest held in memory and on disk is intact. The
lifetime logic (timeouts, PATCH, busy VMs, events, bad input) is tested in process in
``tests/integration/test_api_lifetimes.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_owned
from tests.vm.test_api import sqlite_only
from tests.vm.test_exec import events_of, exit_of, output

# Longer than the check command takes under TCG (~2 s), which must find the VM still running.
IDLE_S = 5

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]


@pytest.fixture
async def lifetimes_api(
    database_url: str, minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller that looks at lifetimes five times a second."""
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_DATABASE_URL": database_url}
    ).with_overrides(lifetime_check_interval_s=0.2)
    async for api in serve_owned(settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir):
        yield api


async def test_an_idle_vm_is_paused_and_the_next_command_resumes_it_intact(
    lifetimes_api: Api,
) -> None:
    api = lifetimes_api
    async with api.client() as admin, httpx.AsyncClient() as agent:
        created = await admin.post("/api/vms", json={"userId": "ann", "idleTimeoutS": IDLE_S})
        assert created.status_code == 201, created.text
        vm = created.json()
        url = f"/api/vms/{vm['id']}"
        # A process that counts (in its own session: an exec's end takes its process group
        # with it), and a file on the VM's disk.
        # The exec waits for the first count: until then setsid's child may not have left the
        # exec's process group, which the exec's end kills.
        script = (
            "echo kept > kept.txt && sync && setsid -f sh -c "
            "'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' "
            ">/dev/null 2>&1 && while [ ! -s /tmp/count ]; do sleep 0.05; done && echo started"
        )
        started = await events_of(admin, "POST", f"{url}/exec", json={"cmd": ["sh", "-c", script]})
        assert exit_of(started)["code"] == 0
        for _ in range(300):
            if (await api.ctl.store.vms.get(vm["id"])).status.value == "paused":
                break
            await asyncio.sleep(0.1)
        assert (await api.ctl.store.vms.get(vm["id"])).status.value == "paused"
        with pytest.raises(httpx.TimeoutException):
            await agent.get(f"{vm['agentUrl']}/health", timeout=1.0)

        check = "cat kept.txt; a=$(cat /tmp/count); sleep 1; b=$(cat /tmp/count); echo $a $b"
        ran = await events_of(admin, "POST", f"{url}/exec", json={"cmd": ["sh", "-c", check]})
        assert exit_of(ran)["code"] == 0
        kept, counts = output(ran, "stdout").decode().splitlines()
        assert kept == "kept"
        before, after = (int(n) for n in counts.split())
        assert after > before > 0, "the counting process did not go on after the resume"
        shown = (await admin.get(url)).json()
        assert shown["status"] == "ready"
        events = [e for e in await api.ctl.events.list() if e.vm_id == vm["id"]]
        assert [e.type for e in events if e.type.startswith("vm.")][-2:] == [
            "vm.timed_out",
            "vm.auto_resumed",
        ]
