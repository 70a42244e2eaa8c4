"""Everything sealed under a lost master key dropped, for ``hearth keys forget-master``.

While the store holds a value sealed under a master key that neither ``HEARTH_MASTER_KEY``,
``master.key`` nor the keyring has, the controller refuses to start (``CredentialVault.load``).
When that key is gone for good, ``what_is_lost`` checks that it is (no key at hand has its id)
and that something is sealed under it, and ``forget_master_key`` gives each kind of value the
ending it has when it can never be opened again:

- a stored credential document is removed: its user logs in again, as one who never did (a row
  kept as ``needs_login`` would keep the ciphertext that refuses the start);
- a VM whose agent token or disk keys it sealed is failed, naming the key, its sealed fields
  dropped (as every failure drops them), and so is a VM that holds a workspace it sealed; the
  controller's next start removes what they left (process, work dir, overlay) as it does for
  every failed VM;
- a workspace is deleted with its row (the files on it cannot be read again); its volume file,
  which no row names then, goes at the controller's next start (``Workspaces.reap_orphans``);
- a webhook is deleted with the deliveries it was owed: it has no disabled state, and it could
  sign nothing again; an admin makes it again, with a new secret;
- auth sessions hold nothing sealed: one whose VM was failed here is ended by the controller's
  ``AuthFlow.recover`` at its next start, as for any VM gone.

Each kind is one transaction, VMs first (so no VM still holds a workspace being deleted). A
crash between two leaves the rest sealed under the key; a rerun finishes it, and a run after
that is refused: nothing is sealed under the key any more. Only key ids are ever named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hearth.control.lifetimes import running_fields
from hearth.credentials.keys import KEYRING_DIR, MASTER_KEY_FILE, is_key_id, read_keyring
from hearth.credentials.vault import CredentialVault, describe_sealed, unopenable
from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.store import Store, VmRecord
from hearth.store.records import (
    AGENT_TOKEN_SEAL,
    VM_KEYS_SEAL,
    WEBHOOK_SECRET_SEAL,
    WORKSPACE_KEY_SEAL,
    utc_now,
)
from hearth.vm.types import VmState

_log = get_logger("credentials.forget")
COMMAND = "hearth keys forget-master"
CREDENTIAL = "credential"  # what ``SealedRepo.count_by_key`` calls a credential document
# How many ids a line of the report names before it says how many more there are.
_NAMED = 10


def keys_at_hand(state_dir: Path, master_key: str | None) -> tuple[str, ...]:
    """The ids of the master keys the vault of ``state_dir`` opens with (``HEARTH_MASTER_KEY``
    ``master_key`` or ``master.key``, and the keyring), found without making a key file where
    there is none."""
    if master_key or (state_dir / MASTER_KEY_FILE).exists():
        return CredentialVault.load(state_dir, master_key).key_ids
    return tuple(sorted(key.key_id for key in read_keyring(state_dir / KEYRING_DIR)))


@dataclass(frozen=True)
class LostKey:
    """A master key no key at hand opens, and how many values are sealed under it, by kind
    (``count_by_key``'s names: ``credential``, then each ``SealedKind.bound_to``)."""

    key_id: str
    sealed: Mapping[str, int]

    def summary(self) -> str:
        """The counts by kind, in one line."""
        return ", ".join(f"{count} {what}" for what, count in sorted(self.sealed.items()))


async def what_is_lost(store: Store, key_id: str, *, keys: Iterable[str]) -> LostKey:
    """``key_id`` as a key to forget: InvalidInput if it is not a key id (a key itself, given
    by mistake, is never repeated), Conflict if it is among ``keys`` (the ids at hand: nothing
    is lost), NotFound naming the key ids that do seal something if nothing is under it."""
    if not is_key_id(key_id):
        raise InvalidInput(
            "KEY_ID must be a master key's id (16 hex digits, as `hearth serve` names it when "
            "it refuses to start), never a key"
        )
    if key_id in set(keys):
        raise Conflict(
            f"nothing is lost: master key {key_id} is at hand (the current key, or in the "
            f"keyring {KEYRING_DIR}/), so what it sealed still opens; `hearth keys "
            "rotate-master` re-encrypts it under a new key if the old one is to go"
        )
    sealed = await store.sealed.count_by_key()
    under = {what: by_key[key_id] for what, by_key in sealed.items() if key_id in by_key}
    if not under:
        held = sorted({other for by_key in sealed.values() for other in by_key})
        where = "the store holds nothing sealed"
        if held:
            where = f"sealed values are under master key(s) {', '.join(held)}"
        raise NotFound(f"nothing is sealed under master key {key_id}: {where}")
    return LostKey(key_id, under)


@dataclass(frozen=True)
class Forgotten:
    """What ``forget_master_key`` dropped, by kind, and what stays sealed under other keys that
    are not at hand (the controller still refuses to start while there is any)."""

    key_id: str
    credentials: Sequence[str]  # <user>/<provider>, removed
    token_vms: Sequence[str]  # VMs whose agent token it sealed
    keys_vms: Sequence[str]  # VMs whose disk (and saved-state) keys it sealed
    workspaces: Sequence[str]  # the users whose workspaces were deleted
    webhooks: Sequence[str]  # the webhooks deleted
    failed: Sequence[str]  # every VM failed (those above, and those holding such a workspace)
    still_lost: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report: one line per kind, with its count, then whether the controller starts."""
        rows = [
            (CREDENTIAL, self.credentials, "removed", "each user logs in again"),
            (AGENT_TOKEN_SEAL.bound_to, self.token_vms, "dropped", "those VMs' agents"
             " cannot be reached again"),
            (VM_KEYS_SEAL.bound_to, self.keys_vms, "dropped", "those VMs' disks cannot be"
             " opened again"),
            (WORKSPACE_KEY_SEAL.bound_to, self.workspaces, "deleted with the files on them",
             "their users' next CLI VMs get new, empty ones"),
            (WEBHOOK_SECRET_SEAL.bound_to, self.webhooks, "deleted with the deliveries owed",
             "an admin makes them again, with new secrets"),
            ("VMs failed", self.failed, "failed", "each names the key in its error"),
        ]  # fmt: skip
        lines = [f"forgot master key {self.key_id}:"]
        lines += [
            f"  {what}: {len(ids)} {done} ({_named(ids)}): {then}"
            for what, ids, done, then in rows
            if ids
        ]
        lines.append(self._last_line())
        return lines

    def _last_line(self) -> str:
        if self.still_lost:
            return (
                "the controller still refuses to start: other secrets are sealed under master "
                f"keys not at hand: {describe_sealed(self.still_lost)}; restore those keys, or "
                f"forget them too with `{COMMAND}`"
            )
        leftovers = []
        if self.failed:
            leftovers.append("what the failed VMs left (process, work dir, overlay)")
        if self.workspaces:
            leftovers.append("the deleted workspaces' volume files")
        cleanup = f"; at its start it removes {' and '.join(leftovers)}" if leftovers else ""
        now = f"nothing is sealed under master key {self.key_id} now"
        return f"{now}: the controller can start{cleanup}"


def _named(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_NAMED])
    return shown if len(ids) <= _NAMED else f"{shown} and {len(ids) - _NAMED} more"


async def forget_master_key(
    store: Store, lost: LostKey, *, keys: Iterable[str], events: EventLog
) -> Forgotten:
    """Drop everything sealed under ``lost.key_id`` as the module says, kind by kind; tell
    ``events`` of each user's VM failed (``vm.failed``: after the VMs' transaction, as the
    event store appends each event in one of its own; a crash in between loses them); and find
    what stays sealed under keys not among ``keys`` (those at hand)."""
    key = lost.key_id
    token_vms = await store.sealed.under(AGENT_TOKEN_SEAL, key)
    keys_vms = await store.sealed.under(VM_KEYS_SEAL, key)
    holders = await store.sealed.under(WORKSPACE_KEY_SEAL, key, column="vm_id")
    failed = await _fail_vms(store, key, set(token_vms) | set(keys_vms), set(holders))
    for record in failed:
        if not record.pooled:  # a pooled VM is nobody's yet: not told (``VmService.announce``)
            await events.emit(
                EventType.VM_FAILED,
                user_id=record.user_id,
                vm_id=record.id,
                vmType=record.vm_type.value,
                stage="forget-master",
                error=record.error,
            )
    workspace_users = await store.sealed.under(WORKSPACE_KEY_SEAL, key, column="user_id")
    await store.sealed.delete_rows_under(WORKSPACE_KEY_SEAL, key)
    credentials = await store.sealed.delete_credentials_under(key)
    webhooks = await store.webhooks.delete_sealed_under(key)
    still_lost = unopenable(await store.sealed.count_by_key(), keys)
    forgotten = Forgotten(
        key_id=key,
        credentials=credentials,
        token_vms=token_vms,
        keys_vms=keys_vms,
        workspaces=workspace_users,
        webhooks=webhooks,
        failed=[record.id for record in failed],
        still_lost=still_lost,
    )
    _log.warning(
        "master_key_forgotten",
        key_id=key,
        documents=len(credentials),
        vms_failed=len(failed),
        workspaces=len(workspace_users),
        webhooks=len(webhooks),
    )
    return forgotten


async def _fail_vms(
    store: Store, key: str, sealed_vms: set[str], holders: set[str]
) -> list[VmRecord]:
    """Fail, in one transaction, every active VM in ``sealed_vms`` (its token or keys sealed
    under ``key``) or ``holders`` (holding a workspace sealed under it), naming the key; the
    sealed fields of ended VMs under it are dropped too. The VMs failed."""
    now = utc_now()
    moves = []
    for vm_id in sorted(sealed_vms | holders):
        try:
            record = await store.vms.get(vm_id)
        except NotFound:
            continue  # a holder whose row is gone: nothing to fail
        if not record.is_active:
            continue
        what = "agent token or disk keys were" if vm_id in sealed_vms else "workspace was"
        error = (
            f"its {what} sealed under master key {key}, which was lost and forgotten "
            f"(`{COMMAND}`): it cannot be reached or opened again"
        )
        moves.append((record, {"error": error, **running_fields(record, VmState.FAILED, now)}))
    return await store.vms.fail_each(moves, unseal_key_id=key)
