"""The install root's layout operations on a real directory, and finding its processes in /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hearth_agent
from hearth_agent.errors import UpdateFailed
from hearth_agent.install_root import InstallRoot
from hearth_agent.processes import (
    agents_of,
    is_agent,
    live_args,
    module_of,
    started_at,
    stop_processes,
    ticks_since_boot,
)
from tests.processes import until_args_show


@pytest.fixture
def root(tmp_path: Path) -> InstallRoot:
    """An install root as images ship it: ``hearth_agent`` a real directory."""
    package = tmp_path / "hearth_agent"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "0.1.0"\n')
    return InstallRoot(tmp_path)


def test_the_first_update_moves_the_image_directory_to_a_base_release(root: InstallRoot) -> None:
    assert root.current() is None

    base = root.adopt_base("0.1.0")

    assert base.name == "0.1.0-base"
    assert os.readlink(root.package_link) == "releases/0.1.0-base/hearth_agent"
    assert (root.package_link / "__init__.py").read_text() == '__version__ = "0.1.0"\n'
    assert root.current() == base
    assert root.adopt_base("0.1.0") == base  # later updates leave it where it is


def test_a_staged_release_is_whole_and_the_swap_is_one_rename(root: InstallRoot) -> None:
    base = root.adopt_base("0.1.0")

    release = root.stage("0.1.1-abc", {"__init__.py": b"new\n", "app.py": b"x = 1\n"})
    root.point_to(release)

    assert sorted(p.name for p in release.package.iterdir()) == ["__init__.py", "app.py"]
    assert (release.package / "app.py").stat().st_mode & 0o777 == 0o644
    assert root.current() == release
    assert sorted(p.name for p in (root.path / "releases").iterdir()) == [base.name, release.name]
    assert sorted(p.name for p in root.path.iterdir()) == ["hearth_agent", "releases"]
    root.point_to(base)
    assert root.current() == base


def test_staging_a_release_again_replaces_it(root: InstallRoot) -> None:
    root.stage("0.1.1-abc", {"__init__.py": b"first\n", "old.py": b""})
    release = root.stage("0.1.1-abc", {"__init__.py": b"second\n"})

    assert [p.name for p in release.package.iterdir()] == ["__init__.py"]
    assert (release.package / "__init__.py").read_bytes() == b"second\n"


def test_pruning_keeps_only_the_named_releases(root: InstallRoot) -> None:
    root.adopt_base("0.1.0")
    for name in ("0.1.1-a", "0.1.2-b", "0.1.3-c"):
        root.stage(name, {"__init__.py": b""})

    assert root.prune({"0.1.2-b", "0.1.3-c"}) == ["0.1.0-base", "0.1.1-a"]
    assert sorted(p.name for p in (root.path / "releases").iterdir()) == ["0.1.2-b", "0.1.3-c"]


@pytest.mark.parametrize("target", ["/etc", "releases/x", "elsewhere/x/hearth_agent"])
def test_a_symlink_that_is_not_a_release_is_refused(root: InstallRoot, target: str) -> None:
    root.adopt_base("0.1.0")
    os.unlink(root.package_link)
    os.symlink(target, root.package_link)

    with pytest.raises(UpdateFailed, match="not at a release"):
        root.current()


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_a_release_name_with_a_path_in_it_is_refused(root: InstallRoot, name: str) -> None:
    with pytest.raises(UpdateFailed):
        root.release(name)


def test_the_result_and_the_pid_are_read_back(root: InstallRoot) -> None:
    assert root.read_result() is None
    written = root.write_result(
        from_version="0.1.0", to_version="0.1.1", release="0.1.1-abc", ok=False, error="why"
    )
    root.write_pid(1234)

    assert root.read_result() == written
    assert set(written) == {"from", "to", "release", "ok", "error", "at"}
    assert root.read_pid() == 1234
    assert not [p for p in root.path.iterdir() if p.name.startswith(".")]


def test_a_lock_whose_guard_is_gone_is_stale_and_removed(root: InstallRoot) -> None:
    root.write_lock({"pid": os.getpid(), "to": "0.1.1"})  # alive, but no guard

    assert root.live_lock() is None
    assert not (root.path / "update.lock").exists()


def test_runs_tells_the_package_the_root_holds_from_another(root: InstallRoot) -> None:
    assert root.runs(root.package_link)
    assert not root.runs(Path(hearth_agent.__file__).parent)


# --- processes ---------------------------------------------------------------------------------


@pytest.fixture
def lookalike_agent(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line reads ``... -m hearth_agent --updates ROOT``: a Python that
    sleeps, the rest of its command line being arguments to its ``-c`` script."""
    sleeper = "import time; time.sleep(30)"
    process = subprocess.Popen(
        [sys.executable, "-S", "-c", sleeper, "-m", "hearth_agent", "--updates", str(tmp_path)]
    )
    try:
        until_args_show(process.pid, "hearth_agent")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)


def test_an_agent_of_the_root_is_found_and_stopped_by_pid(
    tmp_path: Path, lookalike_agent: subprocess.Popen[bytes]
) -> None:
    pid = lookalike_agent.pid

    assert agents_of(tmp_path) == [pid]
    assert agents_of(tmp_path / "other") == []
    assert is_agent(pid)
    assert not is_agent(os.getpid())
    started = started_at(pid)
    assert started is not None
    assert started <= ticks_since_boot()

    assert stop_processes([pid], grace_s=2.0) == [pid]
    lookalike_agent.wait(timeout=5)
    assert live_args(pid) is None


def test_module_of_reads_the_module_after_dash_m() -> None:
    assert module_of([sys.executable, "-S", "-m", "hearth_agent", "--listen", "x"]) == (
        "hearth_agent"
    )
    assert module_of([sys.executable, "script.py", "-m"]) is None
