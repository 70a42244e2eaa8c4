"""Agent tokens at rest: sealed by the vault into the VM's row, never in clear on the disk.

A VM's agent token opens everything in that VM (files, exec, the user's credentials). The
controller holds it in memory while the VM runs. So that a restarted controller can reach the
VMs it adopts, the store keeps it too, sealed (``row_seal``). The row's ``token_hash`` names it
without revealing it. Entering ``destroyed`` or ``failed`` drops the sealed token.
"""

from __future__ import annotations

import hashlib

from hearth.control.row_seal import RowSeal
from hearth.credentials.vault import CredentialVault
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.store.records import AGENT_TOKEN_SEAL

_log = get_logger("control.agent_tokens")


def token_hash(token: str) -> str:
    """The sha256 of a VM's agent token: names it in the store without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()


class AgentTokens:
    """Seals a VM's agent token into the fields of its row, and opens it from the row."""

    def __init__(self, vault: CredentialVault) -> None:
        self._seal = RowSeal(vault, AGENT_TOKEN_SEAL)

    def fields(self, vm_id: str, token: str | None) -> dict[str, object]:
        """The row fields that keep ``token`` (sealed) for VM ``vm_id``; all None for none."""
        sealed = self._seal.seal(vm_id, None if token is None else token.encode())
        return {"token_hash": None if token is None else token_hash(token), **sealed}

    def open(self, record: VmRecord) -> str | None:
        """The agent token sealed in ``record``; None if it holds none or it does not open
        (logged: such a VM cannot be reached, and reconciliation treats it as lost)."""
        plain = self._seal.open(record)
        if plain is None:
            return None
        token = plain.decode()
        if token_hash(token) != record.token_hash:
            _log.warning("agent_token_unreadable", vm_id=record.id, error="hash mismatch")
            return None
        return token
