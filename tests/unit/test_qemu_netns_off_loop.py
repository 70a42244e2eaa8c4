"""A QEMU VM in network mode ``netns`` gets and gives back its namespace off the event loop.

Building one is ~15 runs of ``ip``/``nft``/``sysctl`` (each up to its 30 s timeout when a tool
hangs); they run in a worker thread, so the controller keeps serving its API, tunnels and
heartbeats meanwhile, and a caller cancelled half-way leaves neither namespace nor slot behind.
The tools here are fakes first on PATH that log their command line and take 0.1 s each (a real
``ip`` under load takes 5-50 ms): no namespace is made, and the "QEMU" that ``ip netns exec``
would start is the fake ``ip`` too, which exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.errors import VmProcessExited
from hearth.images.manifest import ImageDir
from hearth.network.namespace import names_for
from hearth.vm.accel import Accel
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.hibernation import DiskLayer
from hearth.vm.qemu.network import QemuNetworks
from hearth.vm.qemu.records import write_record
from hearth.vm.qemu.saved_state import StateWriter, new_state_key
from hearth.vm.saved_files import state_path
from hearth.vm.types import BootMode, GuestForward, NetworkMode, Vm, VmSpec, VmState

TOOL_S = 0.1
# Without the thread one namespace stalls the loop for ~15 tool runs (≈ 1.5 s here).
MAX_STALL_S = 0.5
FORWARDS = (GuestForward("10.0.2.101", 3128, 40000),)
VM_ID = "vm-12345678-aaaa"


@pytest.fixture
def tool_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake ``ip``, ``nft`` and ``sysctl`` first on PATH; the file their command lines go to."""
    bin_dir, log = tmp_path / "bin", tmp_path / "tools.log"
    bin_dir.mkdir()
    for tool in ("ip", "nft", "sysctl"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nsleep {TOOL_S}\n')
        script.chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


@contextlib.asynccontextmanager
async def loop_stalls() -> AsyncIterator[list[float]]:
    """The gaps between the ticks of a 10 ms ticker on the event loop, while inside."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)  # ticking before the work under watch starts
    try:
        yield gaps
    finally:
        ticker.cancel()


def hibernated_netns_vm(backend: QemuBackend) -> Vm:
    """A hibernated VM in network mode netns, with a saved state and recorded disk layers."""
    workdir = backend.vms_dir / VM_ID
    workdir.mkdir(parents=True)
    vm = Vm(
        id=VM_ID,
        spec=VmSpec(network=NetworkMode.NETNS, guest_forwards=FORWARDS),
        backend="qemu",
        state=VmState.HIBERNATED,
        boot_mode=BootMode.WAKE,
        workdir=workdir,
    )
    writer = StateWriter(state_path(workdir), new_state_key())
    writer.write(b"x" * 100)
    writer.finish()
    pinned = workdir / "pinned"
    paths = VmPaths(workdir=workdir, run_dir=backend.run_dir, vm_id=vm.id)
    layers = (DiskLayer(pinned / "layer-0.raw", "raw"),)
    write_record(vm, paths, None, None, image=ImageDir(pinned), layers=layers)
    return vm


async def test_a_netns_vm_builds_and_removes_its_namespace_without_stalling_the_loop(
    tmp_path: Path, tool_log: Path
) -> None:
    backend = QemuBackend(
        state_dir=tmp_path / "state", run_dir=tmp_path / "run", accel=Accel("tcg", "test")
    )
    vm = hibernated_netns_vm(backend)
    netns, _ = names_for(VM_ID)

    async with loop_stalls() as gaps:
        # Its network is made, its "QEMU" exits at once, the failed wake removes the network.
        with pytest.raises(VmProcessExited):
            await backend.wake(vm, new_state_key())

    calls = tool_log.read_text().splitlines()
    assert calls[0] == f"ip netns add {netns}"
    assert f"ip netns exec {netns} nft -f -" in calls
    assert f"ip netns del {netns}" in calls
    assert len(calls) > 15
    assert max(gaps) < MAX_STALL_S, f"the event loop stalled for {max(gaps):.2f} s"
    assert backend.networks.pool.claims() == {}
    assert vm.state is VmState.HIBERNATED


async def test_a_namespace_cancelled_while_being_built_is_finished_then_removed(
    tmp_path: Path, tool_log: Path
) -> None:
    networks = QemuNetworks(cidr="169.254.0.0/16", claims_dir=tmp_path / "slots")
    netns, host_veth = names_for(VM_ID)
    creating = asyncio.create_task(networks.create(VM_ID, FORWARDS))
    while "lo up" not in tool_log.read_text():  # well into the build
        await asyncio.sleep(0.01)

    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating

    calls = tool_log.read_text().splitlines()
    # The build ran to its end (it cannot be stopped half-way), and only then went away.
    built = calls.index("nft -f -")  # the root namespace's forwards: the build's last step
    assert calls[built + 1 :] == [
        f"ip netns del {netns}",
        f"nft delete table ip hearth_{netns.removeprefix('hearth-')}",
        f"ip link del {host_veth}",
    ]
    assert networks.pool.claims() == {}
    await networks.delete(VM_ID, None)  # nothing of it is left to delete
    assert len(tool_log.read_text().splitlines()) == len(calls)
