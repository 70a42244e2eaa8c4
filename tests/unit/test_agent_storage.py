"""Atomic, owner-only credential files on a real temporary filesystem."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hearth_agent.errors import StorageError
from hearth_agent.log import JsonLogger
from hearth_agent.providers import get_provider
from hearth_agent.storage import CredentialStore, atomic_write, ensure_private_dirs


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
