"""A VM's disk key and saved-state key at rest: sealed by the vault into its row.

A VM's own disk layer is encrypted under a key of its own (``hearth.vm.qemu.disk_keys``), and a
hibernated VM's saved memory under another (``hearth.vm.qemu.saved_state``). While the VM runs,
its QEMU holds the disk key; a hibernated VM has no QEMU, so the controller keeps both, sealed in
the row (``row_seal``) and nowhere else: neither is ever written to the state dir, and the files
next to them do not open without the store *and* the master key. The state key exists only
between a hibernation and the wake that consumes that state. Both go when the VM ends.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from hearth.control.row_seal import RowSeal
from hearth.credentials.vault import CredentialVault
from hearth.store import VmRecord
from hearth.store.records import SEALED_KEYS_FIELDS, VM_KEYS_SEAL


@dataclass(frozen=True)
class HeldKeys:
    """The keys a VM's row holds: its disk's, and its saved state's while hibernated."""

    disk: bytes | None = field(default=None, repr=False)
    state: bytes | None = field(default=None, repr=False)


def _text(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _bytes(value: object) -> bytes | None:
    return base64.b64decode(value) if isinstance(value, str) else None


class VmKeys:
    """Seals a VM's keys into the fields of its row, and opens them from the row."""

    def __init__(self, vault: CredentialVault) -> None:
        self._seal = RowSeal(vault, VM_KEYS_SEAL)

    def fields(self, vm_id: str, keys: HeldKeys) -> dict[str, object]:
        """The row fields that keep ``keys`` sealed for VM ``vm_id`` (all None for no key)."""
        if keys.disk is None and keys.state is None:
            return self._seal.seal(vm_id, None)
        plain = json.dumps({"disk": _text(keys.disk), "state": _text(keys.state)})
        return self._seal.seal(vm_id, plain.encode())

    def open(self, record: VmRecord) -> HeldKeys | None:
        """The keys sealed in ``record``: empty ones when it holds none, None when they do not
        open (logged)."""
        if all(getattr(record, column) is None for column in SEALED_KEYS_FIELDS):
            return HeldKeys()
        plain = self._seal.open(record)
        if plain is None:
            return None
        document = json.loads(plain)
        return HeldKeys(disk=_bytes(document.get("disk")), state=_bytes(document.get("state")))
