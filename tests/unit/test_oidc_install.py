"""The bench's OAuth server install: shipped sources, ``npm ci`` output kept under the cache dir."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from hearth.bench.errors import BenchError
from hearth.bench.oidc_install import (
    MANIFESTS,
    SERVER_SCRIPT,
    SOURCE_DIR,
    installed_dir,
    lockfile_digest,
    ready_dir,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_server_ships_in_the_package_data_without_node_modules() -> None:
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["hearth"]
    package_root = SOURCE_DIR.parents[1]
    for name in (SERVER_SCRIPT, *MANIFESTS):
        relative = (SOURCE_DIR / name).relative_to(package_root).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
    assert not (SOURCE_DIR / "node_modules").exists()


def test_an_install_is_named_by_the_lockfile_digest_under_the_cache_dir(tmp_path: Path) -> None:
    assert installed_dir(tmp_path) == tmp_path / "oidc-server" / lockfile_digest()
    assert len(lockfile_digest()) == 64


def test_a_missing_install_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"-m hearth\.bench\.oidc_install"):
        ready_dir(tmp_path)


def test_a_ready_install_gets_the_shipped_server_script(tmp_path: Path) -> None:
    target = installed_dir(tmp_path)
    (target / "node_modules" / "oidc-provider").mkdir(parents=True)
    (target / SERVER_SCRIPT).write_text("// an older server\n")
    assert ready_dir(tmp_path) == target
    assert (target / SERVER_SCRIPT).read_bytes() == (SOURCE_DIR / SERVER_SCRIPT).read_bytes()
    assert (target / SERVER_SCRIPT).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.iterdir()) == ["node_modules", SERVER_SCRIPT]
