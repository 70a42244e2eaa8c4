"""``hearth keys forget-master KEY_ID``: the way out when the master key something was sealed
under is lost. Everything sealed under it is dropped, each kind with its ending (a credential
removed, a VM failed, a workspace and a webhook deleted), and the controller, which refused to
start, starts and cleans the failed VMs up; refused, with nothing changed, while the key is at
hand, when nothing is sealed under it, and off a terminal without ``--yes``. The real command
line and ``hearth serve``, on SQLite and PostgreSQL; never a key or a secret in what it says."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.control.row_seal import RowSeal
from hearth.credentials import CredentialVault
from hearth.credentials.forget import forget_master_key, what_is_lost
from hearth.credentials.keys import key_id_of
from hearth.errors import ConfigError
from hearth.events.log import EventLog
from hearth.metrics import ControllerMetrics
from hearth.store import Store
from hearth.store.records import AGENT_TOKEN_SEAL, VM_KEYS_SEAL, WORKSPACE_KEY_SEAL, WorkspaceRecord
from hearth.vm.types import VmState
from tests.conftest import HEARTH, hearth_cli
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api, until_status
from tests.integration.store_fixtures import new_vm
from tests.integration.test_serve_unusable_store import _closed_port

BANNER = "hearth controller on "


@dataclass
class Sealed:
    """What a controller sealed under the state dir's first ``master.key`` (its id ``key_id``,
    the key ``key``): a ready CLI VM of ann's with its workspace, her codex credential, and a
    webhook; and every secret among them, none of which may ever be printed."""

    backend: FakeBackend
    vm_id: str
    webhook_id: str
    key_id: str
    key: str
    secrets: list[str]


async def _seal_everything(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> Sealed:
    backend = FakeBackend()
    async with running_api(settings, backend, tmp_path / "image") as api:
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert made.status_code == 201, made.text
        vm_id = made.json()["id"]
        await until_status(api, vm_id, "ready")
        hook, signing_secret = await api.ctl.webhooks.create("http://127.0.0.1:9/h", ["vm.failed"])
        document = make_document("codex", marker="forget-ann")
        await api.ctl.credentials.capture("ann", "codex", json.dumps(document).encode())
        sealed = await api.ctl.store.sealed.count_by_key()
    (key_id,) = sealed["agent-token"]
    assert set(sealed) == {"credential", "agent-token", "vm-keys", "workspace", "webhook"}
    assert all(set(by_key) == {key_id} for by_key in sealed.values())
    key = (settings.state_dir / "master.key").read_text().strip()
    token = backend.running[vm_id].token
    assert token
    return Sealed(backend, vm_id, hook.id, key_id, key, [key, token, signing_secret, "forget-ann"])


def _env(settings: Settings, master_key: str = "") -> dict[str, str]:
    return {
        "HEARTH_STATE_DIR": str(settings.state_dir),
        "HEARTH_DATABASE_URL": settings.database(),
        "HEARTH_MASTER_KEY": master_key,
    }


def _forget(
    settings: Settings, *args: str, master_key: str = ""
) -> subprocess.CompletedProcess[str]:
    return hearth_cli("keys", "forget-master", *args, env=_env(settings, master_key), timeout=120)


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())  # the console wraps long lines


@pytest.fixture
def settings(api_settings: Settings) -> Settings:
    """The test's settings, its webhooks allowed to point at loopback."""
    return api_settings.with_overrides(webhook_allow_private=True)


async def test_a_key_at_hand_is_refused_nothing_is_lost(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    async with running_api(settings, sealed.backend, tmp_path / "image") as api:
        before = await api.ctl.store.sealed.count_by_key()

    # The current key, then the same key kept in the keyring while another one is current.
    current = await asyncio.to_thread(_forget, settings, sealed.key_id, "--yes")
    keyring = settings.state_dir / "master.keys.d"
    keyring.mkdir(mode=0o700)
    (settings.state_dir / "master.key").rename(keyring / f"{sealed.key_id}.key")
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    kept = await asyncio.to_thread(_forget, settings, sealed.key_id, "--yes", master_key=other)

    for result in (current, kept):
        assert result.returncode == 1, _said(result)
        assert f"nothing is lost: master key {sealed.key_id} is at hand" in _said(result)
        assert "Traceback" not in _said(result)
    async with running_api(
        settings.with_overrides(master_key=other), sealed.backend, tmp_path / "image"
    ) as api:
        assert await api.ctl.store.sealed.count_by_key() == before
        assert (await api.ctl.store.vms.get(sealed.vm_id)).status is VmState.READY


async def test_a_key_nothing_is_sealed_under_is_refused_naming_the_keys_that_seal(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    (settings.state_dir / "master.key").unlink()  # lost
    stranger = key_id_of(secrets.token_bytes(32))

    result = await asyncio.to_thread(_forget, settings, stranger, "--yes")
    not_an_id = await asyncio.to_thread(_forget, settings, sealed.key, "--yes")  # the key itself

    assert result.returncode == 1, _said(result)
    assert (
        f"nothing is sealed under master key {stranger}: sealed values are under master "
        f"key(s) {sealed.key_id}"
    ) in _said(result)
    assert not_an_id.returncode == 1, _said(not_an_id)
    assert "KEY_ID must be a master key's id" in _said(not_an_id)
    for said in (_said(result), _said(not_an_id)):
        assert not any(secret in said for secret in sealed.secrets)
    assert not (settings.state_dir / "master.key").exists()  # no key made by the refusals


async def test_off_a_terminal_without_yes_it_is_refused_and_nothing_changes(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    (settings.state_dir / "master.key").unlink()

    result = await asyncio.to_thread(_forget, settings, sealed.key_id)

    assert result.returncode == 1, _said(result)
    said = _said(result)
    assert f"this drops what is sealed under master key {sealed.key_id}: 1 agent-token, " in said
    assert "pass --yes to confirm (nothing changed)" in said
    (settings.state_dir / "master.key").write_text(sealed.key + "\n")
    (settings.state_dir / "master.key").chmod(0o600)
    async with running_api(settings, sealed.backend, tmp_path / "image") as api:
        assert (await api.ctl.store.vms.get(sealed.vm_id)).status is VmState.READY
        assert len((await api.ctl.store.sealed.count_by_key())["credential"]) == 1


def _forget_on_a_terminal(settings: Settings, key_id: str, answer: str) -> tuple[int, str]:
    """``forget-master KEY_ID`` without --yes, its stdin a terminal that answers ``answer``;
    its exit status and what it said."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer.encode() + b"\n")
        result = subprocess.run(
            [*HEARTH, "keys", "forget-master", key_id],
            stdin=follower,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **_env(settings), "HEARTH_LOG_FORMAT": "json"},
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    return result.returncode, _said(result)


async def test_on_a_terminal_it_asks_first_listing_the_counts(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    (settings.state_dir / "master.key").unlink()

    declined = await asyncio.to_thread(_forget_on_a_terminal, settings, sealed.key_id, "n")
    accepted = await asyncio.to_thread(_forget_on_a_terminal, settings, sealed.key_id, "y")

    asked = (
        f"Drop what is sealed under master key {sealed.key_id}: 1 agent-token, 1 credential, "
        "1 vm-keys, 1 webhook, 1 workspace? This cannot be undone"
    )
    code, said = declined
    assert code == 1, said
    assert asked in said
    assert "not confirmed: nothing changed" in said
    code, said = accepted
    assert code == 0, said
    assert asked in said
    assert "the controller can start" in said
    assert not any(secret in said for secret in sealed.secrets)


async def test_each_kind_is_dropped_and_the_controller_starts_and_cleans_up(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    (settings.state_dir / "master.key").unlink()  # lost: the file deleted
    volumes = sorted((settings.state_dir / "volumes").glob("*.qcow2"))
    assert len(volumes) == 1
    with pytest.raises(ConfigError, match=f"under key {sealed.key_id}"):
        async with running_api(settings, sealed.backend, tmp_path / "image"):
            pytest.fail("started without the key its secrets were sealed under")

    result = await asyncio.to_thread(_forget, settings, sealed.key_id, "--yes")

    assert result.returncode == 0, _said(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"forgot master key {sealed.key_id}:"
    said = _said(result)
    assert "credential: 1 removed (ann/codex): each user logs in again" in said
    assert f"agent-token: 1 dropped ({sealed.vm_id})" in said
    assert f"vm-keys: 1 dropped ({sealed.vm_id})" in said
    assert "workspace: 1 deleted with the files on them (ann)" in said
    assert f"webhook: 1 deleted with the deliveries owed ({sealed.webhook_id})" in said
    assert f"VMs failed: 1 failed ({sealed.vm_id})" in said
    assert lines[-1].startswith(
        f"nothing is sealed under master key {sealed.key_id} now: the controller can start"
    )
    assert not any(secret in said for secret in sealed.secrets)

    # The controller starts (a new master key made), fails nothing more, and its reconciliation
    # removes what the failed VM left: its process and its workspace's volume file.
    async with running_api(settings, sealed.backend, tmp_path / "image") as api:
        store = api.ctl.store
        vm = await store.vms.get(sealed.vm_id)
        assert vm.status is VmState.FAILED
        assert vm.error is not None
        assert sealed.key_id in vm.error
        assert "forget-master" in vm.error
        assert (vm.token_key_id, vm.token_ciphertext, vm.keys_key_id) == (None, None, None)
        assert sealed.vm_id in sealed.backend.destroyed
        assert sealed.vm_id not in sealed.backend.running
        assert not any(path.exists() for path in volumes)
        assert await store.sealed.count_by_key() == {}
        assert await store.credentials.list("ann") == []
        assert await store.workspaces.get("ann") is None
        assert await store.webhooks.list() == []
        events = await store.events.list(after=0, limit=1000)
        failed = [e for e in events if e.type == "vm.failed" and e.vm_id == sealed.vm_id]
        assert [json.loads(e.data)["stage"] for e in failed] == ["forget-master"]
        # As for a user who never logged in to it.
        codex = [e for e in await api.ctl.credentials.summary("ann") if e["provider"] == "codex"]
        assert [(e["present"], e["needs_login"]) for e in codex] == [(False, False)]

    # A rerun is refused: nothing is sealed under the key any more.
    again = await asyncio.to_thread(_forget, settings, sealed.key_id, "--yes")
    assert again.returncode == 1, _said(again)
    assert f"nothing is sealed under master key {sealed.key_id}: the store holds" in _said(again)


async def test_a_run_cut_short_is_finished_by_a_rerun(
    settings: Settings,
    tmp_path: Path,
    make_document: Callable[..., dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    (settings.state_dir / "master.key").unlink()
    store = await Store.open(settings.database())
    try:
        lost = await what_is_lost(store, sealed.key_id, keys=())

        async def crash(key_id: str) -> list[str]:
            raise OSError("the host went down")

        monkeypatch.setattr(store.webhooks, "delete_sealed_under", crash)
        events = EventLog(store=store, settings=settings, metrics=ControllerMetrics())
        with pytest.raises(OSError, match="the host went down"):
            await forget_master_key(store, lost, keys=(), events=events)
        left = await store.sealed.count_by_key()
    finally:
        await store.close()
    assert left == {"webhook": {sealed.key_id: 1}}  # the kinds before the crash are done

    result = await asyncio.to_thread(_forget, settings, sealed.key_id, "--yes")

    assert result.returncode == 0, _said(result)
    said = _said(result)
    assert f"webhook: 1 deleted with the deliveries owed ({sealed.webhook_id})" in said
    assert "credential:" not in said
    assert "VMs failed" not in said
    assert "the controller can start" in said


async def test_vms_holding_a_forgotten_workspace_fail_and_ended_vms_lose_their_seals(
    store: Store, tmp_path: Path
) -> None:
    lost_vault = CredentialVault.load(tmp_path / "lost")
    kept_vault = CredentialVault.load(tmp_path / "kept")
    await store.users.ensure("ann")
    sealed_by = {"vm-lost": lost_vault, "vm-holder": kept_vault, "vm-ended": lost_vault}
    for vm_id, vault in sealed_by.items():
        status = VmState.DESTROYED if vm_id == "vm-ended" else VmState.READY
        await store.vms.insert(
            new_vm(
                "ann",
                id=vm_id,
                status=status,
                **RowSeal(vault, AGENT_TOKEN_SEAL).seal(vm_id, b"token-" + vm_id.encode()),
                **RowSeal(vault, VM_KEYS_SEAL).seal(vm_id, b'{"disk": "k"}'),
            )
        )
    await store.workspaces.insert(
        WorkspaceRecord(
            id="ws-ann",
            user_id="ann",
            size_mib=64,
            vm_id="vm-holder",
            **RowSeal(lost_vault, WORKSPACE_KEY_SEAL).seal("ws-ann", b"ws-key"),  # type: ignore[arg-type]
        )
    )
    key = lost_vault.current_key_id
    lost = await what_is_lost(store, key, keys=kept_vault.key_ids)
    assert lost.sealed == {"agent-token": 2, "vm-keys": 2, "workspace": 1}
    events = EventLog(store=store, settings=Settings(), metrics=ControllerMetrics())

    forgotten = await forget_master_key(store, lost, keys=kept_vault.key_ids, events=events)

    assert sorted(forgotten.failed) == ["vm-holder", "vm-lost"]
    holder = await store.vms.get("vm-holder")
    assert holder.status is VmState.FAILED
    assert holder.error is not None
    assert f"workspace was sealed under master key {key}" in holder.error
    assert holder.token_key_id is None  # a failed VM's seals go, whatever key they were under
    ended = await store.vms.get("vm-ended")
    assert ended.status is VmState.DESTROYED
    assert (ended.token_key_id, ended.keys_key_id) == (None, None)
    assert await store.sealed.count_by_key() == {}
    assert forgotten.lines()[-1].startswith(f"nothing is sealed under master key {key} now")


def _serve(settings: Settings, logs: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """The real ``hearth serve`` on a closed loopback port; its stdout and stderr files."""
    out, err = logs / "serve.out", logs / "serve.err"
    env = {
        **os.environ,
        **_env(settings),
        "HEARTH_LOG_FORMAT": "json",
        "HEARTH_PREPARE_TEMPLATES": "0",
        "HEARTH_HOST": "127.0.0.1",
    }
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*HEARTH, "serve", "--port", str(_closed_port())],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return process, out, err


def _started_and_stopped(settings: Settings, logs: Path) -> str:
    """Start the real controller, wait for its start line, stop it with SIGTERM (exit 0);
    everything it said."""
    process, out, err = _serve(settings, logs)
    try:
        deadline = time.monotonic() + 90
        while BANNER not in out.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, out.read_text() + err.read_text()
            time.sleep(0.1)
        assert BANNER in out.read_text(), err.read_text()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    said = out.read_text() + err.read_text()
    assert code == 0, said
    return said


async def test_real_serve_is_refused_before_and_starts_after(
    settings: Settings, tmp_path: Path, make_document: Callable[..., dict[str, object]]
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    (settings.state_dir / "master.key").unlink()
    port = str(_closed_port())

    refused = await asyncio.to_thread(
        hearth_cli, "serve", "--port", port, env=_env(settings), timeout=90
    )
    assert refused.returncode == 1, _said(refused)
    assert f"under key {sealed.key_id}" in _said(refused)

    forgot = await asyncio.to_thread(_forget, settings, sealed.key_id, "--yes")
    assert forgot.returncode == 0, _said(forgot)
    said = await asyncio.to_thread(_started_and_stopped, settings, tmp_path)

    assert "serve_refused" not in said
    assert not any(secret in said for secret in sealed.secrets)
    assert (settings.state_dir / "master.key").exists()  # a new key, made on this first start
    assert key_id_of(base64.b64decode(sealed.key)) == sealed.key_id
    async with running_api(settings, sealed.backend, tmp_path / "image") as api:
        assert (await api.ctl.store.vms.get(sealed.vm_id)).status is VmState.FAILED
        assert await api.ctl.store.sealed.count_by_key() == {}
