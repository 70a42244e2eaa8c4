"""Agent tokens at rest: sealed by the vault into the VM's row, never in clear on the disk.

A VM's agent token opens everything in that VM (files, exec, the user's credentials). The
controller holds it in memory while the VM runs. So that a restarted controller can reach the
VMs it adopts, the store keeps it too, sealed like a credential document: AES-256-GCM under the
master key, bound to the VM's id (a sealed token copied to another VM's row does not open).
The row's ``token_hash`` names it without revealing it. Entering ``destroyed`` or ``failed``
drops the sealed token (``VmRepo.transition``).
"""

from __future__ import annotations

import hashlib

from hearth.credentials.errors import DecryptionFailed
from hearth.credentials.vault import CredentialVault, Sealed
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.store.records import SEALED_TOKEN_FIELDS

_log = get_logger("control.agent_tokens")
# What the vault binds a token to, with the VM's id (a credential is bound to a provider name,
# which no VM id is).
_SEAL_USER = "agent-token"


def token_hash(token: str) -> str:
    """The sha256 of a VM's agent token: names it in the store without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()


class AgentTokens:
    """Seals a VM's agent token into the fields of its row, and opens it from the row."""

    def __init__(self, vault: CredentialVault) -> None:
        self._vault = vault

    def fields(self, vm_id: str, token: str | None) -> dict[str, object]:
        """The row fields that keep ``token`` (sealed) for VM ``vm_id``; all None for none."""
        if token is None:
            return dict.fromkeys(("token_hash", *SEALED_TOKEN_FIELDS))
        sealed = self._vault.encrypt(token.encode(), user_id=_SEAL_USER, provider=vm_id)
        return {
            "token_hash": token_hash(token),
            "token_key_id": sealed.key_id,
            "token_nonce": sealed.nonce,
            "token_ciphertext": sealed.ciphertext,
        }

    def open(self, record: VmRecord) -> str | None:
        """The agent token sealed in ``record``; None if it holds none or it does not open
        (logged: such a VM cannot be reached, and reconciliation treats it as lost)."""
        key_id, nonce, ciphertext = record.token_key_id, record.token_nonce, record.token_ciphertext
        if key_id is None or nonce is None or ciphertext is None:
            return None
        sealed = Sealed(key_id, nonce, ciphertext)
        try:
            token = self._vault.decrypt(sealed, user_id=_SEAL_USER, provider=record.id).decode()
        except DecryptionFailed as exc:  # altered, another VM's, or an unknown key
            _log.warning("agent_token_unreadable", vm_id=record.id, error=exc.message[:300])
            return None
        if token_hash(token) != record.token_hash:
            _log.warning("agent_token_unreadable", vm_id=record.id, error="hash mismatch")
            return None
        return token
