"""``hearth keys rotate-master`` re-seals every secret the vault sealed into a row, not only the
credential documents: VM agent tokens and keys, workspace keys, webhook signing secrets; one that
does not open stops nothing else. A real store (SQLite and PostgreSQL) and vault; each secret is
read back through the code that opens it in the product."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from hearth.config import Settings
from hearth.control.row_seal import RowSeal
from hearth.credentials import CredentialService, CredentialVault, DecryptionFailed
from hearth.credentials.reseal import reseal_rows
from hearth.events.webhooks import WebhookService
from hearth.store import Store
from hearth.store.records import (
    AGENT_TOKEN_SEAL,
    VM_KEYS_SEAL,
    WORKSPACE_KEY_SEAL,
    WorkspaceRecord,
)
from tests.conftest import hearth_cli
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import new_vm


async def sealed_rows(store: Store, vault: CredentialVault) -> tuple[str, str]:
    """A VM row with a token and keys, a workspace with a key, a webhook: their ids."""
    await store.users.ensure("ann")
    vm_id = "vm-reseal-1"
    await store.vms.insert(
        new_vm(
            "ann",
            id=vm_id,
            **RowSeal(vault, AGENT_TOKEN_SEAL).seal(vm_id, b"agent-token-ann"),
            **RowSeal(vault, VM_KEYS_SEAL).seal(vm_id, b'{"disk": "k"}'),
        )
    )
    await store.workspaces.insert(
        WorkspaceRecord(
            id="ws-ann",
            user_id="ann",
            size_mib=64,
            **RowSeal(vault, WORKSPACE_KEY_SEAL).seal("ws-ann", b"workspace-key"),  # type: ignore[arg-type]
        )
    )
    hooks = WebhookService(store=store, vault=vault, settings=Settings(webhook_allow_private=True))
    record, _ = await hooks.create("http://127.0.0.1:9/hook", ["vm.ready"])
    return vm_id, record.id


async def opened(store: Store, vault: CredentialVault, vm_id: str, hook_id: str) -> list[bytes]:
    vm = await store.vms.get(vm_id)
    workspace = await store.workspaces.get("ann")
    assert workspace is not None
    hooks = WebhookService(store=store, vault=vault, settings=Settings())
    secret = hooks.secret_of(await store.webhooks.get(hook_id)).encode()
    return [
        RowSeal(vault, AGENT_TOKEN_SEAL).open(vm) or b"",
        RowSeal(vault, VM_KEYS_SEAL).open(vm) or b"",
        RowSeal(vault, WORKSPACE_KEY_SEAL).open(workspace) or b"",
        secret,
    ]


async def key_ids(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT token_key_id FROM vms UNION SELECT keys_key_id FROM vms "
                    "UNION SELECT seal_key_id FROM workspaces UNION SELECT key_id FROM webhooks"
                )
            )
        ).all()
    return {row[0] for row in rows}


async def test_every_sealed_row_secret_moves_to_the_new_key_and_still_opens(
    store: Store, tmp_path: Path
) -> None:
    vault = CredentialVault.load(tmp_path / "state")
    vm_id, hook_id = await sealed_rows(store, vault)
    before = await opened(store, vault, vm_id, hook_id)
    old = vault.current_key_id

    new = vault.rotate(tmp_path / "state")

    assert await reseal_rows(store, vault) == 4
    assert await key_ids(store) == {new}
    assert await opened(store, vault, vm_id, hook_id) == before
    assert await reseal_rows(store, vault) == 0  # a rerun finds nothing left to do
    # The old key can be retired: a vault that knows only the new one opens everything.
    (tmp_path / "state" / "master.keys.d" / f"{old}.key").unlink()
    fresh = CredentialVault.load(tmp_path / "state")
    assert old not in fresh.key_ids
    assert await opened(store, fresh, vm_id, hook_id) == before


async def test_a_secret_that_does_not_open_is_named_and_the_others_are_done(
    store: Store, tmp_path: Path
) -> None:
    vault = CredentialVault.load(tmp_path / "state")
    vm_id, _ = await sealed_rows(store, vault)
    async with store.engine.begin() as conn:  # altered on disk
        await conn.execute(text("UPDATE workspaces SET seal_ciphertext = :c"), {"c": b"x" * 40})
    vault.rotate(tmp_path / "state")

    with pytest.raises(DecryptionFailed, match="workspace of ws-ann"):
        await reseal_rows(store, vault)

    assert len(await key_ids(store)) == 2  # the workspace's stays under the old key
    vm = await store.vms.get(vm_id)
    assert RowSeal(vault, AGENT_TOKEN_SEAL).open(vm) == b"agent-token-ann"


async def test_rotate_master_reseals_everything_else_when_one_document_does_not_open(
    store: Store,
    database_url: str,
    tmp_path: Path,
    make_document: Callable[..., dict[str, object]],
) -> None:
    state = tmp_path / "state"
    vault = CredentialVault.load(state)
    vm_id, hook_id = await sealed_rows(store, vault)
    before = await opened(store, vault, vm_id, hook_id)
    service = CredentialService(store, vault)
    await store.users.ensure("bob")
    documents = {
        user: json.dumps(make_document("codex", marker=f"{user}-codex")).encode()
        for user in ("ann", "bob")
    }
    for user, document in documents.items():
        await service.capture(user, "codex", document)
    async with store.engine.begin() as conn:  # bob's altered on disk
        await conn.execute(
            text("UPDATE credentials SET sha256 = :s WHERE user_id = 'bob'"), {"s": "f" * 64}
        )
    old = vault.current_key_id

    result = await asyncio.to_thread(
        hearth_cli,
        "keys",
        "rotate-master",
        "--state-dir",
        str(state),
        env={"HEARTH_DATABASE_URL": database_url, "HEARTH_MASTER_KEY": ""},
        timeout=120,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    new = CredentialVault.load(state)
    # Every other secret moved to the new key and opens; only bob's document stays behind.
    assert await key_ids(store) == {new.current_key_id}
    assert await opened(store, new, vm_id, hook_id) == before
    records = {r.user_id: r for r in await store.credentials.all()}
    assert (records["ann"].key_id, records["bob"].key_id) == (new.current_key_id, old)
    assert await CredentialService(store, new).document("ann", "codex") == documents["ann"]
    # Said so, naming the row, and how many are left under an older key; no secret printed.
    assert f"master key is now {new.current_key_id}" in result.stdout
    message = " ".join(result.stderr.split())
    assert "could not be opened and keep their old keys: bob/codex" in message
    assert "1 sealed secret(s) are still under an older key" in message
    printed = result.stdout + result.stderr
    for secret in ["agent-token-ann", "workspace-key", "rt-codex-refresh-"]:
        assert secret not in printed
