"""The credential service: captures documents into the vault, opens them, and rotates the key."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.credentials.documents import DocumentFacts, inspect_document, provider_named
from hearth.credentials.errors import DecryptionFailed, reseal_incomplete
from hearth.credentials.vault import CredentialVault, Sealed
from hearth.errors import Conflict, NotFound
from hearth.logging import get_logger
from hearth.store import Clock, CredentialRecord, CredentialSource, Store, utc_now
from hearth_agent.wire import Provider

# A record that changes under a re-encryption this many times in a row is reported, not chased.
RESEAL_ATTEMPTS = 3
# How many undecryptable documents a failed re-encryption names in its message.

_log = get_logger("credentials")
# A write run in a transaction someone else holds (see ``CredentialService.capture``).
Write = Callable[[AsyncConnection], Awaitable[None]]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class CredentialService:
    """Keeps each user's credential documents sealed in the store; the one path to plaintext."""

    def __init__(self, store: Store, vault: CredentialVault, *, clock: Clock = utc_now) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock

    async def capture(
        self,
        user_id: str,
        provider: str,
        document_bytes: bytes,
        *,
        with_move: Callable[[Write], Awaitable[object]] | None = None,
    ) -> CredentialRecord:
        """Seal a document captured in the Browser VM as the user's current one for ``provider``.

        The document must pass the agent's own checks (strict JSON object, provider field
        rules); its sha256 and expiry are computed with the agent's parsing. Replaces any
        earlier document for the provider, which starts out undelivered. InvalidInput for a
        bad document, NotFound for an unknown user. ``with_move`` commits the write in the
        transaction of another (a login's session moving on, which a cancel may have beaten):
        both land or neither does.
        """
        facts = inspect_document(provider, document_bytes)
        sealed = self._seal(user_id, facts, document_bytes, source=CredentialSource.CAPTURED)
        if with_move is None:
            record = await self._store.credentials.put(sealed)
        else:
            written: list[CredentialRecord] = []

            async def write(conn: AsyncConnection) -> None:
                written.append(await self._store.credentials.put_on(conn, sealed))

            await with_move(write)
            [record] = written
        _log.info(
            "credential_captured",
            user_id=user_id,
            provider=facts.provider,
            sha256=record.sha256,
            key_id=record.key_id,
            expires_at=_iso(record.expires_at),
        )
        return record

    async def document(self, user_id: str, provider: str) -> bytes:
        """The user's current ``provider`` document, decrypted, byte for byte as captured.

        NotFound if there is none; DecryptionFailed if it does not open or no longer matches
        its recorded sha256.
        """
        provider_named(provider)
        record = await self._store.credentials.get(user_id, provider)
        if record is None:
            raise NotFound(f"user {user_id} has no {provider} credentials")
        return self._open(record)

    async def stored(self, user_id: str, provider: str) -> CredentialRecord | None:
        """The user's stored ``provider`` record as it is now (sealed), or None."""
        return await self._store.credentials.get(user_id, provider)

    async def mark_delivered(
        self, user_id: str, provider: str, vm_id: str, *, sha256: str
    ) -> CredentialRecord:
        """Record that the document with ``sha256`` now sits in VM ``vm_id`` (Conflict if a new
        capture replaced it meanwhile: a stale delivery is never credited to the new one)."""
        return await self._store.credentials.mark_delivered(user_id, provider, vm_id, sha256=sha256)

    async def mark_withdrawn(self, user_id: str, provider: str, vm_id: str, *, sha256: str) -> bool:
        """Record that the document with ``sha256`` no longer sits in VM ``vm_id`` (taken out
        again); False if the row had moved on (another delivery or document) meanwhile."""
        return await self._store.credentials.mark_withdrawn(user_id, provider, vm_id, sha256=sha256)

    async def summary(self, user_id: str) -> list[dict[str, object]]:
        """One entry per supported provider saying what is stored, never the document itself.

        Keys: provider, present, sha256, expires_at, source, delivered_to, delivered_at,
        updated_at (times as ISO 8601 strings in UTC, or None), needs_login (the provider
        refused its refresh: the user must log in again).
        """
        stored = {record.provider: record for record in await self._store.credentials.list(user_id)}
        entries: list[dict[str, object]] = []
        for provider in Provider:
            record = stored.get(provider)
            entries.append(
                {
                    "provider": provider.value,
                    "present": record is not None,
                    "sha256": None if record is None else record.sha256,
                    "expires_at": None if record is None else _iso(record.expires_at),
                    "source": None if record is None else record.source.value,
                    "delivered_to": None if record is None else record.delivered_to_vm_id,
                    "delivered_at": None if record is None else _iso(record.delivered_at),
                    "updated_at": None if record is None else _iso(record.updated_at),
                    "needs_login": record is not None and record.needs_login,
                }
            )
        return entries

    async def pull_back(
        self,
        user_id: str,
        provider: str,
        document_bytes: bytes,
        *,
        vm_id: str,
        listed: CredentialRecord | None = None,
    ) -> bool:
        """Keep a document read back from CLI VM ``vm_id`` if its token expires later than the
        stored one, and the stored one is still of the delivery into that VM.

        CLIs refresh their tokens in place, so the VM's copy can be newer than the vault's.
        ``listed`` is the stored record the caller saw delivered to ``vm_id`` before it asked
        the VM (without it, the stored record now is taken): a credential deleted, captured
        (a fresh login's document is kept as it is) or delivered again since is left as it
        is. The checks and the write are one statement (see
        ``CredentialRepo.replace_if_newer``). A document without a readable expiry cannot be
        shown to be newer and is not kept. Returns whether the document replaced the stored one.
        """
        facts = inspect_document(provider, document_bytes)
        if facts.expires_at is None:
            _log.warning("credential_pull_back_without_expiry", user_id=user_id, provider=provider)
            return False
        if listed is None:
            listed = await self._store.credentials.get(user_id, facts.provider)
        delivered_at = None if listed is None else listed.delivered_at
        replaced = False
        if listed is not None and listed.delivered_to_vm_id == vm_id and delivered_at is not None:
            record = self._seal(
                user_id,
                facts,
                document_bytes,
                source=CredentialSource.PULLED_BACK,
                delivered_to_vm_id=vm_id,
            )
            replaced = await self._store.credentials.replace_if_newer(
                record, delivered_at=delivered_at, newer_than=facts.expires_at
            )
        # Every round reads every delivered document back: only a replacement is news.
        (_log.info if replaced else _log.debug)(
            "credential_pulled_back",
            user_id=user_id,
            provider=facts.provider,
            sha256=facts.sha256,
            vm_id=vm_id,
            expires_at=_iso(facts.expires_at),
            replaced=replaced,
        )
        return replaced

    async def reencrypt_all(self) -> int:
        """Re-seal every document not under the current key; return how many were re-sealed.

        Each document is its own compare-and-set transaction, so an interrupted run leaves
        every document readable and a rerun skips those already under the current key. A
        document that does not open, or that kept changing under the re-seal, is logged and
        skipped; if any were, the rest are done first, then DecryptionFailed (Conflict if all
        of them only kept changing) names them.
        """
        resealed = 0
        failed: list[str] = []
        changing: list[str] = []
        for record in await self._store.credentials.all():
            try:
                if await self._reseal(record):
                    resealed += 1
            except (DecryptionFailed, Conflict) as exc:
                _log.error(
                    "credential_reseal_failed",
                    user_id=record.user_id,
                    provider=record.provider,
                    key_id=record.key_id,
                    error=exc.message,
                )
                named = f"{record.user_id}/{record.provider}"
                (failed if isinstance(exc, DecryptionFailed) else changing).append(named)
        if changing:
            kept = f"{len(changing)} kept changing (run it again): {', '.join(changing)}"
            if not failed:
                raise Conflict(f"re-encrypted {resealed} credential documents, but {kept}")
            error = reseal_incomplete("credential documents", resealed, failed)
            raise DecryptionFailed(f"{error.message}; {kept}")
        if failed:
            raise reseal_incomplete("credential documents", resealed, failed)
        _log.info("credentials_reencrypted", key_id=self._vault.current_key_id, count=resealed)
        return resealed

    async def rotate_master(self, state_dir: Path) -> tuple[str, int]:
        """Switch to a new master key and re-seal every document under it.

        Returns the new key id and how many documents were re-sealed. Documents keep opening
        throughout (the old key stays in the keyring); if interrupted, ``reencrypt_all``
        finishes the job.
        """
        key_id = self._vault.rotate(state_dir)
        return key_id, await self.reencrypt_all()

    def _seal(
        self,
        user_id: str,
        facts: DocumentFacts,
        document_bytes: bytes,
        *,
        source: CredentialSource,
        delivered_to_vm_id: str | None = None,
    ) -> CredentialRecord:
        sealed = self._vault.encrypt(document_bytes, user_id=user_id, provider=facts.provider)
        return CredentialRecord(
            user_id=user_id,
            provider=facts.provider,
            key_id=sealed.key_id,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            sha256=facts.sha256,
            expires_at=facts.expires_at,
            source=source,
            delivered_to_vm_id=delivered_to_vm_id,
            delivered_at=None if delivered_to_vm_id is None else self._clock(),
        )

    def _open(self, record: CredentialRecord) -> bytes:
        plaintext = self._vault.decrypt(
            Sealed(record.key_id, record.nonce, record.ciphertext),
            user_id=record.user_id,
            provider=record.provider,
        )
        # The digest column is outside the ciphertext's associated data; check they agree.
        if hashlib.sha256(plaintext).hexdigest() != record.sha256:
            raise DecryptionFailed(
                f"the {record.provider} credentials of user {record.user_id} do not match "
                "their recorded sha256"
            )
        return plaintext

    async def _reseal(self, record: CredentialRecord) -> bool:
        for _ in range(RESEAL_ATTEMPTS):
            if record.key_id == self._vault.current_key_id:
                return False
            sealed = self._vault.encrypt(
                self._open(record), user_id=record.user_id, provider=record.provider
            )
            done = await self._store.credentials.reseal(
                record, key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext
            )
            if done is not None:
                return True
            # Replaced or re-sealed since we read it: look again.
            fresh = await self._store.credentials.get(record.user_id, record.provider)
            if fresh is None:
                return False
            record = fresh
        raise Conflict(
            f"the {record.provider} credentials of user {record.user_id} kept changing during "
            "re-encryption; run it again"
        )
