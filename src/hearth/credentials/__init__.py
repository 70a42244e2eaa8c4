"""Credentials at rest: the vault that seals them and the service that captures and opens them.

``CredentialVault.load(state_dir, master_key)`` holds the master keys; ``CredentialService(store,
vault)`` is the only way from a captured document to a stored one and back.
"""

from __future__ import annotations

from hearth.credentials.documents import DocumentFacts, inspect_document
from hearth.credentials.errors import CredentialError, DecryptionFailed, UnknownMasterKey
from hearth.credentials.keys import MASTER_KEY_ENV, MasterKey, key_id_of
from hearth.credentials.service import CredentialService
from hearth.credentials.vault import CredentialVault, Sealed

__all__ = [
    "MASTER_KEY_ENV",
    "CredentialError",
    "CredentialService",
    "CredentialVault",
    "DecryptionFailed",
    "DocumentFacts",
    "MasterKey",
    "Sealed",
    "UnknownMasterKey",
    "inspect_document",
    "key_id_of",
]
