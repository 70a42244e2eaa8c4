"""The credential vault with real AES-256-GCM: sealing, binding to user/provider/key, tampering."""

from __future__ import annotations

import json
import pickle
import traceback
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from hearth.credentials import (
    CredentialVault,
    DecryptionFailed,
    MasterKey,
    Sealed,
    UnknownMasterKey,
)
from hearth.credentials.keys import KEYRING_DIR, MASTER_KEY_FILE
from hearth.credentials.vault import NONCE_BYTES, associated_data

ACCESS = "sk-ant-oat01-vault-access-7f3a9c"
REFRESH = "sk-ant-ort01-vault-refresh-b41e02"
PLAINTEXT = json.dumps(
    {
        "claudeAiOauth": {
            "accessToken": ACCESS,
            "refreshToken": REFRESH,
            "expiresAt": 1_900_000_000_000,
            "scopes": ["user:inference"],
        }
    }
).encode()


def rendered(exc: BaseException) -> str:
    """Everything an exception could show: its str, repr and the full formatted chain."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def key_file_text(state_dir: Path) -> str:
    """The base64 key held in ``master.key``."""
    return (state_dir / MASTER_KEY_FILE).read_text().strip()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state dir that does not exist yet (the vault creates it)."""
    return tmp_path / "state"


@pytest.fixture
def vault(state_dir: Path) -> CredentialVault:
    """A vault whose key file was just created."""
    return CredentialVault.load(state_dir)


def test_a_sealed_document_opens_for_the_same_user_and_provider(vault: CredentialVault) -> None:
    sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="claude_code")
    assert sealed.key_id == vault.current_key_id
    assert vault.decrypt(sealed, user_id="alice", provider="claude_code") == PLAINTEXT


def test_every_sealing_uses_a_fresh_96_bit_nonce(vault: CredentialVault) -> None:
    seals = [vault.encrypt(PLAINTEXT, user_id="alice", provider="codex") for _ in range(50)]
    assert all(len(s.nonce) == NONCE_BYTES == 12 for s in seals)
    assert len({s.nonce for s in seals}) == 50
    assert len({s.ciphertext for s in seals}) == 50
    # GCM: ciphertext is as long as the plaintext plus a 16-byte tag, and hides it.
    assert all(len(s.ciphertext) == len(PLAINTEXT) + 16 for s in seals)
    assert all(ACCESS.encode() not in s.ciphertext for s in seals)


def test_an_empty_document_round_trips(vault: CredentialVault) -> None:
    sealed = vault.encrypt(b"", user_id="alice", provider="oidc")
    assert vault.decrypt(sealed, user_id="alice", provider="oidc") == b""


@pytest.mark.parametrize(
    ("user_id", "provider"),
    [("bob", "claude_code"), ("alice", "codex"), ("Alice", "claude_code"), ("bob", "codex")],
)
def test_a_document_sealed_for_alice_claude_code_opens_for_no_one_else(
    vault: CredentialVault, user_id: str, provider: str
) -> None:
    sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="claude_code")
    with pytest.raises(DecryptionFailed) as caught:
        vault.decrypt(sealed, user_id=user_id, provider=provider)
    message = str(caught.value)
    assert f"the {provider} credentials of user {user_id}" in message
    assert "sealed for another user or provider, or have been altered" in message
    assert caught.value.code == "credential_decrypt_failed"
    for secret in (ACCESS, REFRESH):
        assert secret not in rendered(caught.value)


def test_associated_data_cannot_be_shifted_between_user_and_provider() -> None:
    # A naive "user|provider" join would make these two equal.
    assert associated_data(user_id="a|b", provider="c", key_id="k") != associated_data(
        user_id="a", provider="b|c", key_id="k"
    )
    assert associated_data(user_id='a","b', provider="c", key_id="k") != associated_data(
        user_id="a", provider='b","c', key_id="k"
    )


def _flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda s: replace(s, ciphertext=_flip(s.ciphertext, 0)), id="first-byte"),
        pytest.param(
            lambda s: replace(s, ciphertext=_flip(s.ciphertext, len(s.ciphertext) // 2)),
            id="middle-byte",
        ),
        pytest.param(lambda s: replace(s, ciphertext=_flip(s.ciphertext, -1)), id="tag"),
        pytest.param(lambda s: replace(s, ciphertext=s.ciphertext[:-1]), id="truncated"),
        pytest.param(lambda s: replace(s, ciphertext=s.ciphertext + b"\0"), id="extended"),
        pytest.param(lambda s: replace(s, nonce=_flip(s.nonce, 0)), id="nonce"),
        pytest.param(lambda s: replace(s, nonce=s.nonce[:8]), id="short-nonce"),
        pytest.param(lambda s: replace(s, ciphertext=b""), id="empty"),
    ],
)
def test_tampered_documents_do_not_open(vault: CredentialVault, tamper: object) -> None:
    sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="claude_code")
    tampered = tamper(sealed)  # type: ignore[operator]
    with pytest.raises(DecryptionFailed) as caught:
        vault.decrypt(tampered, user_id="alice", provider="claude_code")
    assert "credentials of user alice" in str(caught.value)
    assert ACCESS not in rendered(caught.value)


def test_a_document_relabelled_with_another_key_id_does_not_open(
    vault: CredentialVault, state_dir: Path
) -> None:
    old_id = vault.current_key_id
    sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="claude_code")
    new_id = vault.rotate(state_dir)
    relabelled = replace(sealed, key_id=new_id)
    with pytest.raises(DecryptionFailed, match=f"under master key {new_id}"):
        vault.decrypt(relabelled, user_id="alice", provider="claude_code")
    assert vault.decrypt(sealed, user_id="alice", provider="claude_code") == PLAINTEXT
    assert old_id != new_id


@pytest.mark.parametrize("key_id", ["0123456789abcdef", "../../../etc/passwd", "", "x" * 500])
def test_a_document_under_a_key_the_vault_lacks_is_an_unknown_master_key(
    vault: CredentialVault, key_id: str, state_dir: Path
) -> None:
    sealed = replace(vault.encrypt(PLAINTEXT, user_id="alice", provider="codex"), key_id=key_id)
    with pytest.raises(UnknownMasterKey) as caught:
        vault.decrypt(sealed, user_id="alice", provider="codex")
    assert isinstance(caught.value, DecryptionFailed)
    assert caught.value.code == "master_key_unknown"
    assert KEYRING_DIR in str(caught.value)
    assert len(str(caught.value)) < 300


def test_reprs_show_key_ids_and_sizes_never_key_material_or_plaintext(
    vault: CredentialVault, state_dir: Path
) -> None:
    encoded = key_file_text(state_dir)
    sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="claude_code")
    shown = "\n".join([repr(vault), str(vault), repr(sealed), str(sealed)])
    assert vault.current_key_id in repr(vault)
    assert f"ciphertext=<{len(sealed.ciphertext)} bytes>" in repr(sealed)
    assert encoded not in shown
    assert ACCESS not in shown
    assert sealed.ciphertext.hex()[:16] not in shown


def test_master_keys_refuse_to_be_pickled(vault: CredentialVault) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(vault)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(MasterKey.generate())


def test_vault_logs_carry_key_ids_but_no_secrets(state_dir: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        vault = CredentialVault.load(state_dir)
        first_key = key_file_text(state_dir)
        sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="claude_code")
        new_id = vault.rotate(state_dir)
        second_key = key_file_text(state_dir)
        with pytest.raises(DecryptionFailed):
            vault.decrypt(sealed, user_id="bob", provider="claude_code")
        CredentialVault.load(state_dir)
    events = [entry["event"] for entry in logs]
    assert events == [
        "master_key_created",
        "master_key_loaded",
        "master_key_rotated",
        "master_key_loaded",
    ]
    text = repr(logs)
    assert new_id in text
    for secret in (first_key, second_key, ACCESS, REFRESH):
        assert secret not in text


def test_a_sealed_value_is_a_frozen_value_object(vault: CredentialVault) -> None:
    sealed = vault.encrypt(PLAINTEXT, user_id="alice", provider="oidc")
    assert sealed == Sealed(sealed.key_id, sealed.nonce, sealed.ciphertext)
    with pytest.raises(AttributeError):
        sealed.key_id = "other"  # type: ignore[misc]
