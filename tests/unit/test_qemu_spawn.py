"""What a VMM the node starts (QEMU, Firecracker) inherits: none of the controller's secrets,
and no core dump.

QEMU runs the guest (and, for it, ``exec:cat`` of a migration and a guest forward's socat): its
environment holds nothing but PATH and the locale, and it may not dump core, nor would a dump
hold guest memory (``dump-guest-core=off``). Host tools (qemu-img, ip, …) get the controller's
environment without its ``HEARTH_`` settings. A harmless program stands in for QEMU, started
through the same spawn function.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.tools import run_tool
from hearth.vm.firecracker.process import FirecrackerProcess, VmRoot
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.process import spawn_qemu
from tests.unit.test_qemu_console_log import argv_of
from tests.unit.test_qemu_option_paths import after, qemu_options

SECRETS = {
    "HEARTH_MASTER_KEY": "bWFzdGVyLWtleS1vZi10aGUtY29udHJvbGxlci0xMjM0NQ==",
    "HEARTH_ADMIN_KEY": "admin-key-in-the-controller-environment-0123456789",
    "HEARTH_KEY_HASH_SECRET": "key-hash-secret-of-the-controller-0123456789",
    "HEARTH_DATABASE_URL": "postgresql://hearth:password@127.0.0.1/hearth",
}


@pytest.fixture
def controller_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The controller's secrets in its environment, and a core limit that lets it dump core."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_PROXY_SETTING", "kept for builds")
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    allowed = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    resource.setrlimit(resource.RLIMIT_CORE, (allowed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def environment_and_core_limit(pid: int) -> tuple[list[str], tuple[int, int]]:
    """The names in ``pid``'s environment, and its core limit."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = sorted(entry.split(b"=")[0].decode() for entry in environ if entry)
    return names, resource.prlimit(pid, resource.RLIMIT_CORE)


async def test_qemu_inherits_no_secret_and_may_not_dump_core(
    controller_env: None, tmp_path: Path
) -> None:
    proc = await spawn_qemu(["/bin/sleep", "30"], stderr=tmp_path / "qemu.stderr")
    try:
        names, core = environment_and_core_limit(proc.pid)
    finally:
        proc.kill()
        await proc.wait()

    assert not [name for name in names if name.startswith("HEARTH_")]
    assert "SOME_PROXY_SETTING" not in names
    assert "PATH" in names
    assert core == (0, 0)


async def test_firecracker_inherits_no_secret_and_may_not_dump_core(
    controller_env: None, tmp_path: Path
) -> None:
    started = await FirecrackerProcess.start(
        ["/bin/sleep", "30"],
        vm_id="vm-1",
        root=VmRoot(tmp_path),
        console=tmp_path / "console.log",
        stderr=tmp_path / "stderr.log",
    )
    try:
        names, core = environment_and_core_limit(started.pid)
    finally:
        started.proc.kill()
        await started.proc.wait()

    assert not [name for name in names if name.startswith("HEARTH_")]
    assert "SOME_PROXY_SETTING" not in names
    assert core == (0, 0)


def test_host_tools_inherit_no_controller_setting(controller_env: None) -> None:
    proc = run_tool(["env"], what="print the environment")

    names = [line.split("=")[0] for line in proc.stdout.decode().splitlines()]
    assert not [name for name in names if name.startswith("HEARTH_")]
    assert "SOME_PROXY_SETTING" in names  # an image build's proxy or npm settings still pass


def test_a_qemu_core_dump_would_hold_no_guest_memory(tmp_path: Path) -> None:
    argv = argv_of(VmPaths(workdir=tmp_path, run_dir=tmp_path, vm_id="vm-1"), tmp_path)

    [machine] = after(argv, "-machine")
    assert qemu_options(machine, implied="type") == {"type": "pc", "dump-guest-core": "off"}
