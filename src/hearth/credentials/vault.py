"""The credential vault: AES-256-GCM sealing of credential documents under rotating master keys.

Each document is sealed with a fresh 96-bit random nonce under the current master key, with
associated data naming the user, the provider and the key id: a sealed row copied to another
user or provider, or relabelled with another key id, fails to open. Older keys stay in a keyring
so documents sealed before a rotation still open until they are re-sealed.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag

from hearth.credentials.errors import DecryptionFailed, UnknownMasterKey
from hearth.credentials.keys import (
    KEYRING_DIR,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE,
    MasterKey,
    archive_key,
    decode_master_key,
    is_key_id,
    load_or_create_key_file,
    read_key_file,
    read_keyring,
    read_keyring_key,
    replace_key_file,
)
from hearth.errors import ConfigError
from hearth.logging import get_logger

NONCE_BYTES = 12  # 96 bits, the size GCM is defined for
_AAD_LABEL = "hearth.credentials.v1"

_log = get_logger("credentials.vault")


@dataclass(frozen=True, slots=True, repr=False)
class Sealed:
    """A sealed document: the id of the key that sealed it, the nonce, and the ciphertext+tag."""

    key_id: str
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return (
            f"Sealed(key_id={self.key_id!r}, nonce=<{len(self.nonce)} bytes>, "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )


def associated_data(*, user_id: str, provider: str, key_id: str) -> bytes:
    """What a sealed document is bound to, encoded unambiguously (a JSON array)."""
    return json.dumps(
        [_AAD_LABEL, user_id, provider, key_id], separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def _load_or_create_key_file(path: Path) -> MasterKey:
    key, created = load_or_create_key_file(path)
    if created:
        _log.info("master_key_created", key_id=key.key_id, path=str(path))
    return key


def describe_sealed(sealed: Mapping[str, Mapping[str, int]]) -> str:
    """What ``sealed`` (``count_by_key``'s answer) holds, by kind and key id, in one line."""
    return "; ".join(
        f"{sum(by_key.values())} {what} ("
        + ", ".join(f"{count} under key {key_id}" for key_id, count in sorted(by_key.items()))
        + ")"
        for what, by_key in sorted(sealed.items())
    )


def _missing_key_message(key_file: Path, sealed: Mapping[str, Mapping[str, int]]) -> str:
    return (
        f"no master key: {MASTER_KEY_ENV} is not set and {key_file} does not exist, but the "
        f"store holds secrets sealed under a master key: {describe_sealed(sealed)}. A new key "
        f"would open none of them. Set {MASTER_KEY_ENV} to the key they were sealed under, or "
        f"restore {key_file}"
    )


def unopenable(
    sealed: Mapping[str, Mapping[str, int]], key_ids: Iterable[str]
) -> dict[str, dict[str, int]]:
    """What in ``sealed`` (``count_by_key``'s answer) is under a key not among ``key_ids``, by
    kind and key id; no kind with nothing left."""
    known = set(key_ids)
    left = {
        what: {key_id: count for key_id, count in by_key.items() if key_id not in known}
        for what, by_key in sealed.items()
    }
    return {what: by_key for what, by_key in left.items() if by_key}


def _wrong_key_message(
    vault: CredentialVault,
    source: str,
    keyring_dir: Path,
    lost: Mapping[str, Mapping[str, int]],
) -> str:
    fix = (
        f"Set {MASTER_KEY_ENV} to the key they were sealed under"
        if source == MASTER_KEY_ENV
        else f"Restore the {MASTER_KEY_FILE} they were sealed under (or set {MASTER_KEY_ENV})"
    )
    return (
        f"wrong master key: {source} holds master key {vault.current_key_id}, but the store "
        f"holds secrets sealed under master keys neither it nor the keyring has: "
        f"{describe_sealed(lost)}; keys at hand: {', '.join(vault.key_ids)}. They would not open "
        f"(and the VMs whose agent tokens do not open would be failed). {fix}, or put each "
        f"missing key in {keyring_dir}/<key id>.key (mode 0600)"
    )


class CredentialVault:
    """Seals and opens credential documents; holds the current master key and older ones.

    Build it with ``CredentialVault.load(state_dir, master_key)``. Its repr shows key ids only.
    """

    def __init__(
        self,
        current: MasterKey,
        *,
        older: Iterable[MasterKey] = (),
        state_dir: Path | None = None,
        current_from_env: bool = False,
    ) -> None:
        self._current = current
        self._keys = {key.key_id: key for key in older}
        self._keys[current.key_id] = current
        self._state_dir = state_dir
        self._current_from_env = current_from_env

    @classmethod
    def load(
        cls,
        state_dir: Path,
        master_key: str | None = None,
        *,
        sealed: Mapping[str, Mapping[str, int]] | None = None,
    ) -> CredentialVault:
        """The vault of ``state_dir``: current key ``master_key`` (the setting
        ``HEARTH_MASTER_KEY``, base64) or ``master.key``.

        Without the variable (or with it empty) the key file is used, created on first use
        (mode 0600) -- but only while the store holds nothing sealed: ``sealed`` (what
        ``store.sealed.count_by_key()`` returns) naming anything is a ConfigError, since a new
        key would open none of it (and the VMs whose tokens no longer open would be destroyed).
        Likewise, with the variable or the file, a ConfigError (naming the key ids, never a
        key) when ``sealed`` names a key that is neither the current one nor in the keyring.

        Older keys come from ``master.keys.d/<key id>.key``; with the variable
        set, an existing ``master.key`` joins them, so documents sealed before the switch
        still open. Any malformed or group/other-accessible key file is a ConfigError.
        """
        encoded = master_key
        # Parsed before touching the disk: a bad value must not leave a key file behind.
        from_env = decode_master_key(encoded, source=MASTER_KEY_ENV) if encoded else None
        older = read_keyring(state_dir / KEYRING_DIR)
        key_file = state_dir / MASTER_KEY_FILE
        if from_env is None:
            if sealed and not key_file.exists():
                raise ConfigError(_missing_key_message(key_file, sealed))
            current = _load_or_create_key_file(key_file)
        else:
            current = from_env
            with contextlib.suppress(FileNotFoundError):
                older.append(read_key_file(key_file))
        vault = cls(
            current, older=older, state_dir=state_dir, current_from_env=from_env is not None
        )
        source = MASTER_KEY_ENV if from_env is not None else str(key_file)
        # A key that opens none (or not all) of what is sealed is refused as a missing one is:
        # the secrets it cannot open would be lost the same way, VMs failed with them.
        lost = unopenable(sealed or {}, vault.key_ids)
        if lost:
            raise ConfigError(_wrong_key_message(vault, source, state_dir / KEYRING_DIR, lost))
        _log.info(
            "master_key_loaded",
            key_id=current.key_id,
            source=source,
            keyring=len(vault.key_ids),
        )
        return vault

    @property
    def current_key_id(self) -> str:
        """The id of the key new documents are sealed under."""
        return self._current.key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every key this vault can open documents with, sorted."""
        return tuple(sorted(self._keys))

    def encrypt(self, plaintext: bytes, *, user_id: str, provider: str) -> Sealed:
        """Seal ``plaintext`` for ``user_id`` and ``provider`` under the current key."""
        key = self._current
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = associated_data(user_id=user_id, provider=provider, key_id=key.key_id)
        return Sealed(key.key_id, nonce, key.aead.encrypt(nonce, plaintext, aad))

    def decrypt(self, sealed: Sealed, *, user_id: str, provider: str) -> bytes:
        """Open ``sealed`` as ``user_id``'s ``provider`` document.

        DecryptionFailed if it was sealed for another user, provider or key id, or altered;
        UnknownMasterKey if its key is neither current nor in the keyring.
        """
        key = self._key(sealed.key_id)
        what = f"the {provider} credentials of user {user_id}"
        if len(sealed.nonce) != NONCE_BYTES:
            raise DecryptionFailed(
                f"{what} have a {len(sealed.nonce)}-byte nonce, not {NONCE_BYTES}: altered"
            )
        aad = associated_data(user_id=user_id, provider=provider, key_id=key.key_id)
        try:
            return key.aead.decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"{what} do not decrypt under master key {key.key_id}: they were sealed for "
                "another user or provider, or have been altered"
            ) from exc

    def rotate(self, state_dir: Path) -> str:
        """Make a new current key in ``state_dir`` (the dir this vault was loaded from).

        The keyring receives the old key and the new one before ``master.key`` is switched,
        so a crash, or another process rotating at the same time, never loses a key that
        sealed something. Documents sealed earlier still open; re-seal them to retire the old
        key. Returns the new key id. A key supplied by ``HEARTH_MASTER_KEY`` cannot be rotated
        here (ConfigError saying how).
        """
        if self._current_from_env:
            raise ConfigError(
                f"the master key comes from {MASTER_KEY_ENV}, so Hearth cannot replace it: "
                f"copy it into {state_dir / KEYRING_DIR}/{self._current.key_id}.key (mode 0600), "
                f"set {MASTER_KEY_ENV} to a new key, restart, then re-encrypt the credentials"
            )
        if self._state_dir is not None and self._state_dir.resolve() != state_dir.resolve():
            raise ConfigError(
                f"this vault was loaded from {self._state_dir}, not {state_dir}; rotate it there"
            )
        key_file = state_dir / MASTER_KEY_FILE
        keyring_dir = state_dir / KEYRING_DIR
        old = self._current
        new = MasterKey.generate()
        archived = [old, new]
        try:
            on_disk = read_key_file(key_file)
        except FileNotFoundError:
            on_disk = None
        if on_disk is not None and on_disk.key_id != old.key_id:
            archived.append(on_disk)  # another process rotated since we loaded
        for key in archived:
            archive_key(keyring_dir, key)
        replace_key_file(key_file, new)
        for key in archived:
            self._keys[key.key_id] = key
        self._current = new
        self._state_dir = state_dir
        _log.info("master_key_rotated", old_key_id=old.key_id, key_id=new.key_id)
        return new.key_id

    def _key(self, key_id: str) -> MasterKey:
        key = self._keys.get(key_id)
        if key is None and self._state_dir is not None and is_key_id(key_id):
            # Another controller may have rotated since we loaded; its keys are in the keyring.
            key = read_keyring_key(self._state_dir / KEYRING_DIR, key_id)
            if key is not None:
                _log.info("master_key_found_in_keyring", key_id=key_id)
                self._keys[key_id] = key
        if key is None:
            raise UnknownMasterKey(
                f"master key {key_id[:64]!r} is neither current nor in the keyring; restore "
                f"its file as {KEYRING_DIR}/<key id>.key in the state dir"
            )
        return key

    def __repr__(self) -> str:
        return f"CredentialVault(current_key_id={self.current_key_id!r}, key_ids={self.key_ids})"
