"""Firecracker process handling: jailer argv, staging files into a VM's root, PID ownership.

The process tests run a stand-in: Python, invoked through a link named ``firecracker`` with the
same ``--api-sock``/``--id`` arguments, listening on the API socket like Firecracker does.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from hearth.errors import InvalidInput, ToolMissing, VmError, VmProcessExited
from hearth.vm.firecracker.process import (
    FirecrackerProcess,
    JailerConfig,
    VmRoot,
    check_vm_id,
    firecracker_argv,
    is_our_process,
    require_firecracker,
    stop_pid,
)
from hearth.vm.readiness import Deadline
from tests.processes import until_args_show

VM_ID = "vm-0123abcd"
STAND_IN = """
import socket, sys, time
args = sys.argv[1:]
if "--exit" in args:
    print("bad kernel", file=sys.stderr)
    sys.exit(3)
if "--listen" in args:
    time.sleep(0.2)
    server = socket.socket(socket.AF_UNIX)
    server.bind(args[args.index("--api-sock") + 1])
    server.listen()
time.sleep(60)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """A link named ``firecracker`` to this Python."""
    link = tmp_path / "bin" / "firecracker"
    link.parent.mkdir()
    link.symlink_to(sys.executable)
    return link


def stand_in_argv(link: Path, *extra: str) -> list[str]:
    """The stand-in's command line, shaped like ``firecracker_argv``."""
    return [str(link), "-c", STAND_IN, "--api-sock", "api.sock", "--id", VM_ID, *extra]


async def start(link: Path, root: VmRoot, *extra: str) -> FirecrackerProcess:
    """Start the stand-in in ``root``, once /proc shows its command line."""
    proc = await FirecrackerProcess.start(
        stand_in_argv(link, *extra),
        vm_id=VM_ID,
        root=root,
        console=root.path / "console.log",
        stderr=root.path / "firecracker.stderr",
    )
    until_args_show(proc.pid, VM_ID)
    return proc


def test_a_missing_binary_names_where_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissing, match="firecracker-microvm/firecracker/releases"):
        require_firecracker()


def test_firecracker_argv_enters_the_netns_first() -> None:
    argv = firecracker_argv(binary="/usr/bin/firecracker", vm_id=VM_ID, netns="hearth-0123abcd")
    assert argv[1:4] == ["netns", "exec", "hearth-0123abcd"]
    assert argv[4:] == ["/usr/bin/firecracker", "--api-sock", "api.sock", "--id", VM_ID]


def test_jailer_argv_passes_identity_chroot_cgroups_netns_and_the_api_socket() -> None:
    jail = JailerConfig(
        uid=123, gid=100, chroot_base_dir=Path("/srv/j"), cgroups=("cpu.max=50000 100000",)
    )
    argv = jail.argv(
        jailer="/usr/bin/jailer",
        firecracker="/usr/bin/firecracker",
        vm_id=VM_ID,
        netns=Path("/var/run/netns/hearth-0123abcd"),
    )
    assert argv[:5] == ["/usr/bin/jailer", "--id", VM_ID, "--exec-file", "/usr/bin/firecracker"]
    text = " ".join(argv)
    assert "--uid 123 --gid 100" in text
    assert "--chroot-base-dir /srv/j" in text
    assert "--cgroup-version 2" in text
    assert argv[argv.index("--cgroup") + 1] == "cpu.max=50000 100000"
    assert "--netns /var/run/netns/hearth-0123abcd" in text
    assert argv[-3:] == ["--", "--api-sock", "api.sock"]
    assert jail.root("/usr/bin/firecracker", VM_ID) == Path(f"/srv/j/firecracker/{VM_ID}/root")


def test_staging_outside_a_jail_links_by_name(tmp_path: Path) -> None:
    source = tmp_path / "vmlinux"
    source.write_bytes(b"kernel")
    root = VmRoot(tmp_path / "root")
    root.path.mkdir()
    assert root.stage("vmlinux", source) == "vmlinux"
    assert (root.path / "vmlinux").is_symlink()
    assert (root.path / "vmlinux").read_bytes() == b"kernel"
    assert root.stage("vmlinux", source) == "vmlinux"  # staging again replaces the link


def test_staging_into_a_jail_hard_links_and_hands_writable_files_to_its_user(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    jail = JailerConfig(uid=4321, gid=4321, chroot_base_dir=tmp_path / "jail")
    root = VmRoot(tmp_path / "root", jail)
    root.path.mkdir()
    kernel, disk = tmp_path / "vmlinux", tmp_path / "disk.cow"
    kernel.write_bytes(b"kernel")
    disk.write_bytes(b"disk")
    root.stage("vmlinux", kernel)
    root.stage("rootfs", disk, writable=True)
    assert not (root.path / "vmlinux").is_symlink()
    assert (root.path / "vmlinux").stat().st_ino == kernel.stat().st_ino
    assert (root.path / "vmlinux").stat().st_uid == 0
    assert (root.path / "rootfs").stat().st_uid == 4321
    root.create_file("firecracker.log")
    assert (root.path / "firecracker.log").stat().st_uid == 4321


def test_staging_a_block_device_into_a_jail_makes_a_device_node(tmp_path: Path) -> None:
    device = next((p for p in Path("/dev").glob("loop[0-9]*") if p.is_block_device()), None)
    if device is None or os.geteuid() != 0:
        pytest.skip("needs root and a loop block device")
    root = VmRoot(tmp_path / "root", JailerConfig(uid=4321, gid=4321))
    root.path.mkdir()
    try:
        root.stage("rootfs", device)
    except PermissionError:
        pytest.skip("this container may not mknod")
    node = (root.path / "rootfs").stat()
    assert stat.S_ISBLK(node.st_mode)
    assert node.st_rdev == device.stat().st_rdev
    assert node.st_uid == 4321


async def test_a_started_process_is_ours_until_stopped(stand_in: Path, tmp_path: Path) -> None:
    root = VmRoot(tmp_path / "root")
    root.path.mkdir()
    proc = await start(stand_in, root, "--listen")
    try:
        await proc.wait_for_api(Deadline.after(10))
        assert is_our_process(proc.pid, VM_ID)
        assert not is_our_process(proc.pid, "vm-other")
        assert not is_our_process(proc.pid, VM_ID[:-1])  # exact argument, not a prefix
        assert not is_our_process(os.getpid(), VM_ID)  # not a firecracker
    finally:
        status = await proc.stop(grace_s=2)
    assert status != 0
    assert not is_our_process(proc.pid, VM_ID)


async def test_wait_for_api_fails_fast_with_the_output_when_the_process_exits(
    stand_in: Path, tmp_path: Path
) -> None:
    root = VmRoot(tmp_path / "root")
    root.path.mkdir()
    proc = await start(stand_in, root, "--exit")
    with pytest.raises(VmProcessExited, match="status 3") as caught:
        await proc.wait_for_api(Deadline.after(10))
    assert "bad kernel" in caught.value.message


async def test_wait_for_api_gives_up_at_the_deadline(stand_in: Path, tmp_path: Path) -> None:
    root = VmRoot(tmp_path / "root")
    root.path.mkdir()
    proc = await start(stand_in, root)
    try:
        with pytest.raises(VmError, match="API socket not up"):
            await proc.wait_for_api(Deadline.after(0.3))
    finally:
        await proc.stop(grace_s=2)


async def test_stop_pid_kills_only_a_process_that_is_ours(stand_in: Path, tmp_path: Path) -> None:
    """The path taken after a controller restart, when the VM is no longer our child."""
    root = VmRoot(tmp_path / "root")
    root.path.mkdir()
    proc = await start(stand_in, root)
    try:
        await stop_pid(proc.pid, "vm-someone-else", grace_s=0.5)
        assert proc.returncode is None
        await stop_pid(proc.pid, VM_ID, grace_s=2)
        await asyncio.wait_for(proc.proc.wait(), 5)
    finally:
        await proc.stop(grace_s=1)


@pytest.mark.parametrize("bad", ["", "vm_1", "vm 1", "../vm", "v" * 65])
def test_vm_ids_firecracker_would_refuse_are_refused_first(bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_vm_id(bad)
    assert check_vm_id("vm-0d3c1a") == "vm-0d3c1a"
