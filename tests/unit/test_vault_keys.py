"""Master keys on disk and in the environment: creation, permissions, refusal, rotation, keyring."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog

from hearth.credentials import CredentialVault, key_id_of
from hearth.credentials.keys import KEYRING_DIR, MASTER_KEY_ENV, MASTER_KEY_FILE
from hearth.errors import ConfigError

DOCUMENT = b'{"access_token": "oidc-access-keys-5d1c", "refresh_token": "oidc-refresh-keys-90ab"}'


def rendered(exc: BaseException) -> str:
    """Everything an exception could show: its str, repr and the full formatted chain."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def b64(secret: bytes) -> str:
    """Standard base64, as ``openssl rand -base64 32`` prints it."""
    return base64.b64encode(secret).decode()


def mode_of(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.lstat().st_mode)


def write_key(path: Path, secret: bytes, *, mode: int = 0o600) -> None:
    """Put a key file in place with the given permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(b64(secret) + "\n")
    path.chmod(mode)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state dir that does not exist yet (the vault creates it)."""
    return tmp_path / "state"


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Run with umask 000, so only the code's own modes keep files private."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# --- the key file ------------------------------------------------------------------------------


@pytest.mark.usefixtures("loose_umask")
def test_the_key_file_is_created_on_first_use_with_mode_0600(state_dir: Path) -> None:
    vault = CredentialVault.load(state_dir)
    key_file = state_dir / MASTER_KEY_FILE
    assert mode_of(key_file) == 0o600
    assert mode_of(state_dir) == 0o700
    secret = base64.b64decode(key_file.read_text(), validate=False)
    assert len(secret) == 32
    assert key_file.read_text().endswith("\n")
    # The key id spelled out: the first 16 hex digits of the key's sha256.
    assert vault.current_key_id == key_id_of(secret) == hashlib.sha256(secret).hexdigest()[:16]
    assert sorted(p.name for p in state_dir.iterdir()) == [MASTER_KEY_FILE]


def test_the_key_file_is_reused_and_never_rewritten(state_dir: Path) -> None:
    first = CredentialVault.load(state_dir)
    key_file = state_dir / MASTER_KEY_FILE
    before = (key_file.read_bytes(), key_file.stat().st_ino, key_file.stat().st_mtime_ns)
    sealed = first.encrypt(DOCUMENT, user_id="alice", provider="oidc")
    second = CredentialVault.load(state_dir)
    assert second.current_key_id == first.current_key_id
    assert second.decrypt(sealed, user_id="alice", provider="oidc") == DOCUMENT
    after = (key_file.read_bytes(), key_file.stat().st_ino, key_file.stat().st_mtime_ns)
    assert after == before


def test_controllers_starting_at_once_agree_on_one_key(state_dir: Path) -> None:
    barrier = threading.Barrier(8)

    def load() -> str:
        barrier.wait()
        return CredentialVault.load(state_dir).current_key_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        key_ids = list(pool.map(lambda _: load(), range(8)))
    assert len(set(key_ids)) == 1
    assert sorted(p.name for p in state_dir.iterdir()) == [MASTER_KEY_FILE]  # no temp files


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606, 0o666])
def test_a_key_file_open_to_group_or_others_is_refused(state_dir: Path, mode: int) -> None:
    secret = secrets.token_bytes(32)
    key_file = state_dir / MASTER_KEY_FILE
    write_key(key_file, secret, mode=mode)
    with pytest.raises(ConfigError) as caught:
        CredentialVault.load(state_dir)
    message = str(caught.value)
    assert str(key_file) in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {key_file}" in message
    assert b64(secret) not in rendered(caught.value)
    assert mode_of(key_file) == mode  # refused, not silently "fixed"


def test_an_owner_only_key_file_with_the_execute_bit_is_accepted(state_dir: Path) -> None:
    secret = secrets.token_bytes(32)
    write_key(state_dir / MASTER_KEY_FILE, secret, mode=0o700)
    assert CredentialVault.load(state_dir).current_key_id == key_id_of(secret)


def test_a_symlinked_key_file_is_refused(state_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.key"
    write_key(real, secrets.token_bytes(32))
    (state_dir).mkdir()
    (state_dir / MASTER_KEY_FILE).symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        CredentialVault.load(state_dir)


def test_a_directory_in_place_of_the_key_file_is_refused(state_dir: Path) -> None:
    (state_dir / MASTER_KEY_FILE).mkdir(parents=True, mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        CredentialVault.load(state_dir)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this-is-not-base64-at-all!!\n", id="not-base64"),
        pytest.param(base64.b64encode(b"k" * 16) + b"\n", id="16-bytes"),
        pytest.param(base64.b64encode(b"k" * 48) + b"\n", id="48-bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(b"A" * 5000, id="huge"),
    ],
)
def test_a_malformed_key_file_is_refused_without_quoting_it(
    state_dir: Path, content: bytes
) -> None:
    key_file = state_dir / MASTER_KEY_FILE
    state_dir.mkdir()
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        CredentialVault.load(state_dir)
    assert str(key_file) in str(caught.value)
    if content.strip():
        assert content.strip().decode()[:20] not in rendered(caught.value)


# --- HEARTH_MASTER_KEY -------------------------------------------------------------------------


def test_a_master_key_from_the_environment_is_used_and_no_key_file_is_made(
    state_dir: Path,
) -> None:
    secret = secrets.token_bytes(32)
    vault = CredentialVault.load(state_dir, b64(secret) + "\n")
    assert vault.current_key_id == key_id_of(secret)
    assert not (state_dir / MASTER_KEY_FILE).exists()
    sealed = vault.encrypt(DOCUMENT, user_id="alice", provider="oidc")
    again = CredentialVault.load(state_dir, b64(secret))
    assert again.decrypt(sealed, user_id="alice", provider="oidc") == DOCUMENT


def _urlsafe_only_key() -> str:
    while True:  # a key whose standard base64 has '+' or '/', spelled in the URL-safe alphabet
        encoded = b64(secrets.token_bytes(32))
        if "+" in encoded or "/" in encoded:
            return encoded.replace("+", "-").replace("/", "_")


BAD_ENV_VALUES = [
    pytest.param("hunter2-correct-horse-battery-staple", id="not-base64"),
    pytest.param(b64(b"s3cr3t-sixteen!!"), id="16-bytes"),
    pytest.param(b64(b"thirty-three-bytes-of-key-material"), id="33-bytes"),
    pytest.param(b64(b"k" * 64), id="64-bytes"),
    pytest.param(_urlsafe_only_key(), id="urlsafe-alphabet"),
    pytest.param(b64(b"k" * 32)[:-2], id="padding-stripped"),
    pytest.param(b64(b"k" * 32) + "!junk", id="trailing-junk"),
    pytest.param("ключ-" + b64(b"k" * 32), id="non-ascii"),
    pytest.param("   ", id="blank"),
]


@pytest.mark.parametrize("value", BAD_ENV_VALUES)
def test_a_bad_master_key_variable_is_refused_without_echoing_it(
    state_dir: Path, value: str
) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(ConfigError) as caught:
        CredentialVault.load(state_dir, value)
    message = str(caught.value)
    assert message.startswith(MASTER_KEY_ENV)
    assert "base64" in message
    assert caught.value.code == "config_invalid"
    if value.strip():
        assert value.strip() not in rendered(caught.value)
        assert value.strip() not in repr(logs)
    assert not state_dir.exists()  # refused before anything was written


def test_an_empty_master_key_variable_means_unset(state_dir: Path) -> None:
    vault = CredentialVault.load(state_dir, "")
    assert (state_dir / MASTER_KEY_FILE).is_file()
    assert vault.current_key_id == CredentialVault.load(state_dir).current_key_id


def test_switching_to_the_environment_keeps_the_old_key_file_readable(state_dir: Path) -> None:
    before = CredentialVault.load(state_dir)
    sealed = before.encrypt(DOCUMENT, user_id="alice", provider="oidc")
    after = CredentialVault.load(state_dir, b64(secrets.token_bytes(32)))
    assert after.current_key_id != before.current_key_id
    assert after.decrypt(sealed, user_id="alice", provider="oidc") == DOCUMENT
    assert after.encrypt(DOCUMENT, user_id="alice", provider="oidc").key_id == (
        after.current_key_id
    )


def test_a_key_from_the_environment_cannot_be_rotated_by_hearth(state_dir: Path) -> None:
    secret = secrets.token_bytes(32)
    vault = CredentialVault.load(state_dir, b64(secret))
    with pytest.raises(ConfigError) as caught:
        vault.rotate(state_dir)
    assert f"{KEYRING_DIR}/{key_id_of(secret)}.key" in str(caught.value)
    assert b64(secret) not in rendered(caught.value)
    assert not state_dir.exists()
    assert vault.current_key_id == key_id_of(secret)


# --- rotation and the keyring ------------------------------------------------------------------


@pytest.mark.usefixtures("loose_umask")
def test_rotation_makes_a_new_current_key_and_keeps_the_old_one_in_the_keyring(
    state_dir: Path,
) -> None:
    vault = CredentialVault.load(state_dir)
    old_id = vault.current_key_id
    old_text = (state_dir / MASTER_KEY_FILE).read_text()
    sealed_before = vault.encrypt(DOCUMENT, user_id="alice", provider="oidc")

    new_id = vault.rotate(state_dir)

    assert new_id != old_id
    assert vault.current_key_id == new_id
    assert vault.key_ids == tuple(sorted({old_id, new_id}))
    keyring = state_dir / KEYRING_DIR
    assert mode_of(keyring) == 0o700
    assert sorted(p.name for p in keyring.iterdir()) == sorted([f"{old_id}.key", f"{new_id}.key"])
    assert (keyring / f"{old_id}.key").read_text() == old_text
    for path in [state_dir / MASTER_KEY_FILE, *keyring.iterdir()]:
        assert mode_of(path) == 0o600, path
    assert key_id_of(base64.b64decode((state_dir / MASTER_KEY_FILE).read_text())) == new_id
    sealed_after = vault.encrypt(DOCUMENT, user_id="alice", provider="oidc")
    assert sealed_after.key_id == new_id
    for sealed in (sealed_before, sealed_after):
        assert vault.decrypt(sealed, user_id="alice", provider="oidc") == DOCUMENT
    assert not [p for p in state_dir.rglob(".*")]  # no temp files left behind


def test_after_several_rotations_a_reloaded_vault_opens_everything(state_dir: Path) -> None:
    vault = CredentialVault.load(state_dir)
    seals = [vault.encrypt(DOCUMENT, user_id="alice", provider="oidc")]
    for _ in range(3):
        vault.rotate(state_dir)
        seals.append(vault.encrypt(DOCUMENT, user_id="alice", provider="oidc"))
    reloaded = CredentialVault.load(state_dir)
    assert reloaded.current_key_id == vault.current_key_id
    assert len(reloaded.key_ids) == 4
    assert len({s.key_id for s in seals}) == 4
    for sealed in seals:
        assert reloaded.decrypt(sealed, user_id="alice", provider="oidc") == DOCUMENT


def test_a_vault_loaded_before_a_rotation_elsewhere_opens_documents_of_the_new_key(
    state_dir: Path,
) -> None:
    other_controller = CredentialVault.load(state_dir)
    rotating = CredentialVault.load(state_dir)
    rotating.rotate(state_dir)
    sealed = rotating.encrypt(DOCUMENT, user_id="alice", provider="oidc")
    assert sealed.key_id not in other_controller.key_ids
    assert other_controller.decrypt(sealed, user_id="alice", provider="oidc") == DOCUMENT
    assert sealed.key_id in other_controller.key_ids


def test_a_stale_vault_rotating_keeps_the_key_another_controller_rotated_to(
    state_dir: Path,
) -> None:
    stale = CredentialVault.load(state_dir)
    fresh = CredentialVault.load(state_dir)
    fresh.rotate(state_dir)
    sealed_by_fresh = fresh.encrypt(DOCUMENT, user_id="alice", provider="oidc")
    stale.rotate(state_dir)
    reloaded = CredentialVault.load(state_dir)
    assert reloaded.current_key_id == stale.current_key_id
    assert reloaded.decrypt(sealed_by_fresh, user_id="alice", provider="oidc") == DOCUMENT


def test_rotating_in_another_state_dir_is_refused(state_dir: Path, tmp_path: Path) -> None:
    vault = CredentialVault.load(state_dir)
    with pytest.raises(ConfigError, match="loaded from"):
        vault.rotate(tmp_path / "other")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("mode", [0o640, 0o644])
def test_an_insecure_keyring_file_is_refused(state_dir: Path, mode: int) -> None:
    vault = CredentialVault.load(state_dir)
    old_id = vault.current_key_id
    vault.rotate(state_dir)
    keyring_file = state_dir / KEYRING_DIR / f"{old_id}.key"
    keyring_file.chmod(mode)
    secret_text = keyring_file.read_text().strip()
    with pytest.raises(ConfigError) as caught:
        CredentialVault.load(state_dir)
    assert str(keyring_file) in str(caught.value)
    assert secret_text not in rendered(caught.value)


def test_a_keyring_file_named_for_another_key_is_refused(state_dir: Path) -> None:
    CredentialVault.load(state_dir)
    secret = secrets.token_bytes(32)
    wrong_name = state_dir / KEYRING_DIR / "0123456789abcdef.key"
    write_key(wrong_name, secret)
    with pytest.raises(ConfigError, match=f"holds the key with id {key_id_of(secret)}"):
        CredentialVault.load(state_dir)


def test_files_in_the_keyring_that_are_not_keys_are_ignored(state_dir: Path) -> None:
    vault = CredentialVault.load(state_dir)
    keyring = state_dir / KEYRING_DIR
    keyring.mkdir(mode=0o700)
    (keyring / "README").write_text("old keys live here\n")
    (keyring / ".master.key.abc.tmp").write_text("partial")
    assert CredentialVault.load(state_dir).key_ids == vault.key_ids
