"""Atomic, owner-only credential files on a real temporary filesystem."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth_agent.errors import DiskFull, StorageError
from hearth_agent.log import JsonLogger
from hearth_agent.providers import get_provider
from hearth_agent.server import MAX_BODY_BYTES
from hearth_agent.storage import (
    MAX_DOCUMENT_BYTES,
    CredentialStore,
    atomic_write,
    ensure_private_dirs,
)
from tests.integration.tmpfs import small_tmpfs_at

# Far above a prompt refusal (microseconds), far below "forever".
PROMPT_S = 5.0


def mode_of(path: Path) -> int:
    """Permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_the_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    target.write_bytes(b"old")
    target.chmod(0o644)

    atomic_write(target, b"new")

    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600
    assert os.listdir(tmp_path) == ["doc.json"]


def test_ensure_private_dirs_creates_0700_and_leaves_home_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / ".config").mkdir(mode=0o755)

    created = ensure_private_dirs(tmp_path, ".config/hearth")

    assert created == tmp_path / ".config" / "hearth"
    assert mode_of(created) == 0o700
    assert mode_of(tmp_path / ".config") == 0o755
    assert mode_of(tmp_path) == 0o755


def test_store_round_trip_and_delete(tmp_path: Path) -> None:
    store = CredentialStore(home=tmp_path / "home", logger=JsonLogger())
    oidc = get_provider("oidc")
    data = json.dumps({"access_token": "a"}).encode()

    result = store.write(oidc, data)
    stored = store.read(oidc)

    assert stored is not None
    assert stored.content == data
    assert stored.sha256 == result.sha256
    assert mode_of(tmp_path / "home") == 0o700
    assert store.delete(oidc) is True
    assert store.read(oidc) is None
    assert store.delete(oidc) is False


def test_store_translates_filesystem_failures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".codex").write_text("a file where the directory should be")
    store = CredentialStore(home=home, logger=JsonLogger())

    with pytest.raises(StorageError, match="codex"):
        store.write(get_provider("codex"), b"{}")


def outcome_within(seconds: float, call: Callable[[], object]) -> object:
    """What ``call`` returned or raised, run in a thread; fails the test if it is still running
    after ``seconds`` (the thread is a daemon, so a hang cannot outlive the test run)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome[0]


def release_fifo_reader(fifo: Path) -> None:
    """Open and close the FIFO's writing end, so a reader blocked on it (old code) sees EOF."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_the_document_cap_is_the_agents_body_cap() -> None:
    assert MAX_DOCUMENT_BYTES == MAX_BODY_BYTES


def test_a_fifo_at_the_document_path_fails_the_read_at_once_and_frees_the_lock(
    tmp_path: Path,
) -> None:
    store = CredentialStore(home=tmp_path, logger=JsonLogger())
    codex = get_provider("codex")
    (tmp_path / ".codex").mkdir()
    fifo = tmp_path / ".codex" / "auth.json"
    os.mkfifo(fifo)
    try:
        read = outcome_within(PROMPT_S, lambda: store.read(codex))
        assert isinstance(read, StorageError)
        assert "not a regular file" in read.message
        # The refresher's compare-and-write reads under the provider's lock: it must fail and
        # let it go, so the next delivery for the provider is not held behind it.
        replaced = outcome_within(PROMPT_S, lambda: store.replace(codex, b"{}", sha256="0" * 64))
        assert isinstance(replaced, StorageError)
    finally:
        release_fifo_reader(fifo)
    written = outcome_within(PROMPT_S, lambda: store.write(codex, b'{"fresh": 1}'))
    assert not isinstance(written, BaseException)
    assert fifo.read_bytes() == b'{"fresh": 1}'


def test_a_document_above_the_cap_is_refused_unread(tmp_path: Path) -> None:
    store = CredentialStore(home=tmp_path, logger=JsonLogger())
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "auth.json").write_bytes(b"x" * (2 * 1024 * 1024))

    with pytest.raises(StorageError, match="larger than the cap of 1048576 bytes"):
        store.read(get_provider("codex"))


def test_a_document_at_the_cap_is_read(tmp_path: Path) -> None:
    store = CredentialStore(home=tmp_path, logger=JsonLogger())
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "auth.json").write_bytes(b"x" * MAX_DOCUMENT_BYTES)

    stored = store.read(get_provider("codex"))

    assert stored is not None
    assert len(stored.content) == MAX_DOCUMENT_BYTES


def test_a_symlink_at_the_document_path_is_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(b'{"not": "the document"}')
    (home / ".codex" / "auth.json").symlink_to(elsewhere)
    store = CredentialStore(home=home, logger=JsonLogger())

    with pytest.raises(StorageError, match="symlink"):
        store.read(get_provider("codex"))
    # Delete removes the link itself, never what it points to.
    assert store.delete(get_provider("codex")) is True
    assert elsewhere.read_bytes() == b'{"not": "the document"}'


def test_a_symlinked_credential_directory_is_refused_and_its_target_keeps_its_mode(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    (target / "auth.json").write_bytes(b"theirs")
    (home / ".codex").symlink_to(target)
    store = CredentialStore(home=home, logger=JsonLogger())
    codex = get_provider("codex")

    with pytest.raises(OSError, match="symlink"):
        ensure_private_dirs(home, ".codex")
    with pytest.raises(StorageError, match="its directory is a symlink"):
        store.write(codex, b"{}")
    with pytest.raises(StorageError, match="its directory is a symlink"):
        store.read(codex)
    with pytest.raises(StorageError, match="its directory is a symlink"):
        store.delete(codex)

    assert mode_of(target) == 0o755
    assert (target / "auth.json").read_bytes() == b"theirs"
    assert sorted(os.listdir(target)) == ["auth.json"]


def test_a_symlinked_side_file_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "dotfiles.json"
    elsewhere.write_bytes(b"{}")
    elsewhere.chmod(0o644)
    (home / ".claude.json").symlink_to(elsewhere)
    store = CredentialStore(home=home, logger=JsonLogger())

    with pytest.raises(StorageError, match=r"~/\.claude\.json: a symlink"):
        store.write(get_provider("claude_code"), b"{}")

    assert (home / ".claude.json").is_symlink()
    assert elsewhere.read_bytes() == b"{}"
    assert mode_of(elsewhere) == 0o644


def test_a_missing_document_or_home_reads_as_absent(tmp_path: Path) -> None:
    store = CredentialStore(home=tmp_path / "no-home", logger=JsonLogger())

    assert store.read(get_provider("oidc")) is None
    assert store.delete(get_provider("oidc")) is False


def test_a_symlinked_directory_on_the_way_is_still_used(tmp_path: Path) -> None:
    """Only the credential directory must be real: a dotfiles-linked ~/.config keeps working."""
    home = tmp_path / "home"
    home.mkdir()
    dotfiles = tmp_path / "dotfiles-config"
    dotfiles.mkdir()
    (home / ".config").symlink_to(dotfiles)
    store = CredentialStore(home=home, logger=JsonLogger())
    oidc = get_provider("oidc")

    store.write(oidc, b'{"a": 1}')

    stored = store.read(oidc)
    assert stored is not None
    assert stored.content == b'{"a": 1}'
    assert mode_of(dotfiles / "hearth") == 0o700


def test_a_credential_write_to_a_full_disk_is_disk_full_and_leaves_the_old_file(
    tmp_path: Path,
) -> None:
    # The guest's disk (or the user's quota) full: the controller must be told so by name, not
    # with the storage failure every other errno gets.
    home = tmp_path / "home"
    home.mkdir()
    with small_tmpfs_at(home, size="64k"):
        store = CredentialStore(home=home, logger=JsonLogger())
        provider = get_provider("claude_code")
        store.write(provider, b'{"old": true}')
        with pytest.raises(DiskFull) as full:
            store.write(provider, json.dumps({"pad": "x" * 200_000}).encode())
        assert full.value.code == "disk_full"
        assert "no room left on the disk" in str(full.value)
        assert store.read(provider).content == b'{"old": true}'  # type: ignore[union-attr]
