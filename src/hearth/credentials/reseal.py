"""Everything the vault sealed re-sealed under the current master key, for ``hearth keys
rotate-master``: ``reseal_everything`` runs the credential documents' pass
(``CredentialService.reencrypt_all``) and the pass over every other secret sealed into a row
(VM agent tokens, VM disk and saved-state keys, workspace keys, webhook signing secrets:
``SEALED_KINDS``, ``reseal_rows``), each whatever the other raised, then counts what is left.

Like ``reencrypt_all``, ``reseal_rows`` makes each secret its own compare-and-set, so one that
changed meanwhile (its VM ended, a new one was sealed under the current key) is left as it is,
an interrupted run leaves everything readable, and a rerun skips what is done. A secret that
does not open is logged and skipped; DecryptionFailed then names them after the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hearth.credentials.errors import DecryptionFailed, reseal_incomplete
from hearth.credentials.service import CredentialService
from hearth.credentials.vault import CredentialVault, Sealed
from hearth.errors import HearthError
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


@dataclass(frozen=True, slots=True)
class ResealReport:
    """What re-sealing everything under the current key did."""

    documents: int | None  # credential documents re-sealed (None: that pass failed)
    others: int | None  # other sealed secrets re-sealed (None: that pass failed)
    failures: tuple[str, ...]  # why each failed pass failed, naming rows, never a secret
    left: int  # sealed values still under an older key after both passes

    @property
    def complete(self) -> bool:
        """Whether nothing is left under an older key: the older keys can be retired."""
        return not self.failures and self.left == 0


async def reseal_everything(store: Store, vault: CredentialVault) -> ResealReport:
    """Re-seal the credential documents and every other sealed row secret under the vault's
    current key: both passes run, whatever the first raised, and their failures are reported
    together with how many sealed values are still under an older key."""
    failures: list[str] = []

    async def run(what: str, reseal: Callable[[], Awaitable[int]]) -> int | None:
        try:
            return await reseal()
        except HearthError as exc:
            failures.append(exc.message)
        except Exception as exc:  # the other pass must run, whatever this one raised
            _log.exception("reseal_pass_failed", what=what)
            failures.append(f"re-encrypting the {what} failed: {type(exc).__name__} (see the log)")
        return None

    documents = await run("credential documents", CredentialService(store, vault).reencrypt_all)
    others = await run("sealed secrets", lambda: reseal_rows(store, vault))
    return ResealReport(documents, others, tuple(failures), await count_not_under(store, vault))


async def count_not_under(store: Store, vault: CredentialVault) -> int:
    """How many sealed values (credential documents and row secrets) are under a key other
    than the vault's current one."""
    current = vault.current_key_id
    left = sum(record.key_id != current for record in await store.credentials.all())
    for kind in SEALED_KINDS:
        left += len(await store.sealed.not_under(kind, current))
    return left
