"""Secrets kept in a VM's row, sealed by the vault and bound to the VM's id.

A secret the controller needs again after a restart (a VM's agent token, its disk and saved-state
keys) is kept in the VM's row like a credential document: AES-256-GCM under the master key,
bound to the VM's id, so a sealed value copied into another VM's row does not open. Three
columns hold it (key id, nonce, ciphertext); ``VmRepo.transition`` clears them when the VM ends.
"""

from __future__ import annotations

from typing import Protocol

from hearth.credentials.errors import DecryptionFailed
from hearth.credentials.vault import CredentialVault, Sealed
from hearth.logging import get_logger
from hearth.store.records import SealedKind

_log = get_logger("control.row_seal")


class SealedRow(Protocol):
    """A record with an id and the columns a ``RowSeal`` keeps its secret in."""

    @property
    def id(self) -> str:
        """What the sealed secret is bound to."""
        ...


class RowSeal:
    """Seals one kind of secret into ``columns`` of a VM's row, and opens it from there."""

    def __init__(self, vault: CredentialVault, kind: SealedKind) -> None:
        self._vault = vault
        self._columns = kind.columns
        # What the vault binds the secret to with the row's id (a credential is bound to a
        # provider name, which no row id is); different per kind, so no kind opens as another.
        self._bound_to = kind.bound_to

    def seal(self, vm_id: str, plain: bytes | None) -> dict[str, object]:
        """The row fields keeping ``plain`` sealed for VM ``vm_id`` (all None for None)."""
        if plain is None:
            return dict.fromkeys(self._columns)
        sealed = self._vault.encrypt(plain, user_id=self._bound_to, provider=vm_id)
        return dict(
            zip(self._columns, (sealed.key_id, sealed.nonce, sealed.ciphertext), strict=True)
        )

    def open(self, record: SealedRow) -> bytes | None:
        """What ``record`` holds sealed; None if nothing, or if it does not open (logged:
        altered, another VM's, or under an unknown master key)."""
        key_id, nonce, ciphertext = (getattr(record, column) for column in self._columns)
        if key_id is None or nonce is None or ciphertext is None:
            return None
        try:
            return self._vault.decrypt(
                Sealed(key_id, nonce, ciphertext), user_id=self._bound_to, provider=record.id
            )
        except DecryptionFailed as exc:
            _log.warning(
                "sealed_secret_unreadable",
                vm_id=record.id,
                what=self._bound_to,
                error=exc.message[:300],
            )
            return None
