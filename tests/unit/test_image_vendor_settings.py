"""The vendor CLIs' system-wide settings that image builds add beside them."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from hearth.images import vendor
from hearth.images.vendor import system_settings, system_settings_key, write_system_settings


def test_codex_gets_no_daemon_no_update_check_and_no_analytics() -> None:
    config = tomllib.loads(system_settings()["etc/codex/config.toml"].decode())
    assert config == {
        "check_for_update_on_startup": False,
        "analytics": {"enabled": False},
        "features": {"daemon_auto_start": False},
    }


def test_writing_replaces_a_hard_linked_file_and_leaves_the_cached_one(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "config.toml"
    cached.parent.mkdir()
    cached.write_bytes(b"from the cache\n")
    root = tmp_path / "root"
    (root / "etc" / "codex").mkdir(parents=True)
    os.link(cached, root / "etc" / "codex" / "config.toml")

    write_system_settings(root)

    for path, data in system_settings().items():
        written = root / path
        assert written.read_bytes() == data
        assert written.stat().st_mode & 0o777 == 0o644
    assert cached.read_bytes() == b"from the cache\n"


def test_the_key_changes_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    key = system_settings_key()
    assert key == system_settings_key()
    monkeypatch.setattr(vendor, "SYSTEM_SETTINGS", {"etc/codex/other.toml": "codex-config.toml"})
    assert system_settings_key() != key
