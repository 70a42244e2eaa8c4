"""The composition root (``hearth.runtime.open_hearth``) in process, over the fake backend: it
builds both halves from Settings, and however a start or a stop goes, the store is closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.auth.flow import AuthFlow
from hearth.config import Settings
from hearth.errors import TeardownError, VmError
from hearth.runtime import open_hearth
from hearth.store import Store
from hearth.vm.types import VmType
from tests.conftest import hearth_cli
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, FakeImages


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs of stores closed during the test (Store.close still runs)."""
    calls: list[str] = []
    close = Store.close

    async def recording(self: Store) -> None:
        calls.append(self.url_for_log())
        await close(self)

    monkeypatch.setattr(Store, "close", recording)
    return calls


async def test_both_halves_are_built_from_settings_and_the_store_closes_on_exit(
    api_settings: Settings, tmp_path: Path, closed: list[str]
) -> None:
    backend = FakeBackend()
    async with open_hearth(
        api_settings, backend=backend, images=FakeImages(tmp_path / "image")
    ) as hearth:
        assert hearth.node is hearth.control.node
        assert hearth.node.vmm == "fake"
        assert hearth.control.vms.node is hearth.node
        assert await hearth.control.store.ping()
        vms = hearth.control.vms
        record = await vms.create(user_id="alice", spec=vms.spec_for(VmType.CLI, None, None))
        assert record.backend == "fake"
        assert backend.created == [record.id]
    assert len(closed) == 1
    assert backend.running, "VMs keep running across a controller stop by default"


async def test_a_start_that_fails_after_the_store_opened_still_closes_it(
    api_settings: Settings, tmp_path: Path, closed: list[str]
) -> None:
    backend = FakeBackend()

    async def broken_listing() -> list[object]:
        raise VmError("the VMM does not answer")

    backend.list_running = broken_listing  # type: ignore[method-assign,assignment]
    with pytest.raises(VmError, match="the VMM does not answer"):
        async with open_hearth(api_settings, backend=backend, images=FakeImages(tmp_path)):
            pytest.fail("the controller started although reconciliation failed")
    assert len(closed) == 1


async def test_a_failing_stop_step_does_not_stop_the_others_and_is_named(
    api_settings: Settings, tmp_path: Path, closed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_shutdown(self: AuthFlow) -> None:
        raise RuntimeError("flows stuck")

    monkeypatch.setattr(AuthFlow, "shutdown", broken_shutdown)
    with pytest.raises(TeardownError, match="stop the login flows: RuntimeError: flows stuck"):
        async with open_hearth(api_settings, backend=FakeBackend(), images=FakeImages(tmp_path)):
            pass
    assert len(closed) == 1


async def test_health_says_which_vmm_runs_and_why_the_other_could_not(api: Api) -> None:
    body = (await api.client.get("/health")).json()
    assert body["backend"]["name"] == "fake"
    assert set(body["vmms"]) == {"qemu", "firecracker"}
    firecracker = body["vmms"]["firecracker"]
    if not firecracker["ok"]:
        assert firecracker["reason"], "a VMM that cannot run says why"


def test_serve_refuses_a_vmm_that_cannot_run_here_with_the_reason(tmp_path: Path) -> None:
    stderr = serve_refused(tmp_path, HEARTH_FIRECRACKER_BIN=str(tmp_path / "no-firecracker"))
    assert "no-firecracker is not installed" in stderr


def test_serve_refuses_a_default_hibernate_action_the_vmm_cannot_carry_out(tmp_path: Path) -> None:
    stderr = serve_refused(tmp_path, HEARTH_NETWORK_MODE="netns", HEARTH_VM_IDLE_ACTION="hibernate")
    reason = "HEARTH_VM_IDLE_ACTION=hibernate, but firecracker cannot hibernate VMs"
    assert reason in " ".join(stderr.split()), stderr


def serve_refused(tmp_path: Path, **env: str) -> str:
    """``hearth serve`` under firecracker with ``env``: refused before anything started; what
    it wrote to stderr."""
    state = tmp_path / "state"
    environment = {"HEARTH_STATE_DIR": str(state), "HEARTH_VMM": "firecracker", **env}
    result = hearth_cli("serve", "--port", "1", env=environment, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HEARTH_VMM=firecracker cannot run on this host" in result.stderr
    assert not (state / "hearth.db").exists(), "nothing was started"
    return result.stderr


def test_vm_run_refuses_a_vmm_that_cannot_run_here_with_the_reason(tmp_path: Path) -> None:
    result = hearth_cli(
        "vm",
        "run",
        "--once",
        env={
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_VMM": "firecracker",
            "HEARTH_NETWORK_MODE": "netns",
            "HEARTH_FIRECRACKER_BIN": str(tmp_path / "no-firecracker"),
        },
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HEARTH_VMM=firecracker cannot run on this host" in result.stderr
    assert "no-firecracker is not installed" in result.stderr
