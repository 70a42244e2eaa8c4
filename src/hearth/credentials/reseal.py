"""Every secret the vault sealed into a row besides credential documents (VM agent tokens, VM
disk and saved-state keys, workspace keys, webhook signing secrets: ``SEALED_KINDS``)
re-sealed under the current master key, for ``hearth keys rotate-master``.

Like ``CredentialService.reencrypt_all``: each secret is its own compare-and-set, so one that
changed meanwhile (its VM ended, a new one was sealed under the current key) is left as it is,
an interrupted run leaves everything readable, and a rerun skips what is done. A secret that
does not open is logged and skipped; DecryptionFailed then names them after the rest.
"""

from __future__ import annotations

from hearth.credentials.errors import DecryptionFailed, reseal_incomplete
from hearth.credentials.vault import CredentialVault, Sealed
from hearth.logging import get_logger
from hearth.store import Store
from hearth.store.records import SEALED_KINDS, SealedValue

_log = get_logger("credentials.reseal")


async def reseal_rows(store: Store, vault: CredentialVault) -> int:
    """Re-seal every sealed row secret not under the current key; how many were."""
    resealed = 0
    failed: list[str] = []
    for kind in SEALED_KINDS:
        for old in await store.sealed.not_under(kind, vault.current_key_id):
            sealed = Sealed(old.key_id, old.nonce, old.ciphertext)
            try:
                plain = vault.decrypt(sealed, user_id=kind.bound_to, provider=old.row_id)
            except DecryptionFailed as exc:
                _log.error("sealed_reseal_failed", what=kind.bound_to, row_id=old.row_id,
                           key_id=old.key_id, error=exc.message)  # fmt: skip
                failed.append(f"{kind.bound_to} of {old.row_id}")
                continue
            new = vault.encrypt(plain, user_id=kind.bound_to, provider=old.row_id)
            fresh = SealedValue(old.row_id, new.key_id, new.nonce, new.ciphertext)
            if await store.sealed.replace(kind, old, fresh):
                resealed += 1
    if failed:
        raise reseal_incomplete("sealed secrets", resealed, failed)
    _log.info("sealed_secrets_reencrypted", key_id=vault.current_key_id, count=resealed)
    return resealed
