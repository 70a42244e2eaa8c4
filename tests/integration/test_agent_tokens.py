"""Agent tokens at rest, in process on SQLite and PostgreSQL over the fake backend: sealed into
the VM's row (never in clear on the disk), opened by a restarted controller for the VMs it
adopts, bound to the VM's id, and dropped when the VM ends.

That no file of a real VM holds its token, and that a real restarted ``hearth serve`` reaches an
adopted VM's agent, is shown in tests/contract (``host_contract``) and
tests/vm/test_controller_restart.py.
"""

from __future__ import annotations

from pathlib import Path

from hearth.config import Settings
from hearth.control.agent_tokens import token_hash
from tests.fake_backend import FakeBackend
from tests.files import files_holding
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api

SEALED = ("token_key_id", "token_nonce", "token_ciphertext")


async def new_vm(api: Api, user: str) -> tuple[str, str]:
    """A CLI VM of ``user``: its id and the agent token the create showed once."""
    created = await api.client.post("/api/vms", json={"userId": user}, headers=api.headers())
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["agentToken"]


async def test_the_token_is_sealed_in_the_row_and_opened_again_after_a_restart(
    api_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(api_settings, backend, tmp_path / "image") as first:
        vm_id, token = await new_vm(first, "ann")
        row = await first.ctl.store.vms.get(vm_id)
        assert row.token_hash == token_hash(token)
        assert all(getattr(row, name) for name in SEALED)
        assert token.encode() not in (row.token_ciphertext or b"")
    # Nothing under the test's dir (the state dir, a SQLite database) holds the token in clear.
    assert files_holding(tmp_path, token.encode()) == []
    async with running_api(api_settings, backend, tmp_path / "image") as second:
        # The backend's rebuilt VM holds no token; the controller opened the sealed one.
        assert second.ctl.vms.agent_token(vm_id) == token
        shown = await second.client.get(f"/api/vms/{vm_id}", headers=second.headers())
        assert shown.json()["status"] == "ready"
        deleted = await second.client.delete(f"/api/vms/{vm_id}", headers=second.headers())
        assert deleted.json()["status"] == "destroyed"
        gone = await second.ctl.store.vms.get(vm_id)
        assert [getattr(gone, name) for name in SEALED] == [None, None, None]


async def test_a_sealed_token_copied_to_another_vms_row_does_not_open_and_that_vm_fails(
    api_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(api_settings, backend, tmp_path / "image") as first:
        kept, kept_token = await new_vm(first, "ann")
        moved, _ = await new_vm(first, "ann")
        source = await first.ctl.store.vms.get(kept)
        await first.ctl.store.vms.update(
            moved,
            token_hash=source.token_hash,
            **{name: getattr(source, name) for name in SEALED},
        )
    async with running_api(api_settings, backend, tmp_path / "image") as second:
        assert second.ctl.vms.agent_token(kept) == kept_token
        assert second.ctl.vms.agent_token(moved) is None
        failed = await second.ctl.store.vms.get(moved)
        assert failed.status.value == "failed"
        assert failed.error is not None
        assert "agent token could not be opened" in failed.error
        assert moved in backend.destroyed, "a VM nobody can reach was left running"
        assert [getattr(failed, name) for name in SEALED] == [None, None, None]


async def test_a_token_an_older_controller_kept_in_clear_is_sealed_at_restart(
    api_settings: Settings, tmp_path: Path
) -> None:
    """Before migration 0009 the row held only the hash and the backend's records the token:
    the restarted controller adopts the VM with that token and seals it into the row."""
    backend = LegacyBackend()
    async with running_api(api_settings, backend, tmp_path / "image") as first:
        vm_id, token = await new_vm(first, "ann")
        await first.ctl.store.vms.update(vm_id, **dict.fromkeys(SEALED))
    async with running_api(api_settings, backend, tmp_path / "image") as second:
        assert second.ctl.vms.agent_token(vm_id) == token
        row = await second.ctl.store.vms.get(vm_id)
        assert all(getattr(row, name) for name in SEALED)
        assert second.ctl.vms.tokens.open(row) == token


class LegacyBackend(FakeBackend):
    """A backend whose records still hold each VM's token, as an older controller's did."""

    async def list_running(self) -> list:  # type: ignore[type-arg]
        """The VMs alive now, with their tokens."""
        return list(self.running.values())
