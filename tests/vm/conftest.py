"""Fixtures for tests that boot real QEMU VMs from the real minimal image.

``vm_state_dir`` (in tests/conftest.py, shared with the contract suite) is shared by the session
so the snapshot template is built once; every test gets
its own ``qemu_backend`` and, at teardown, every VM it made is destroyed and the test proves that
no QEMU process, overlay, socket or work directory of it is left. On failure the console tails
of its VMs are printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from hearth.network.namespace import list_namespaces, names_for
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.types import Vm


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def qemu_pids_under(directory: Path) -> list[int]:
    """PIDs of live QEMU processes whose command line mentions ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(directory).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


class TrackingBackend(QemuBackend):
    """The real QEMU backend, remembering every VM it created so teardown can check them."""

    created: list[Vm]

    async def create(self, *args: Any, **kwargs: Any) -> Vm:
        vm = await super().create(*args, **kwargs)
        self.created.append(vm)
        return vm


@pytest.fixture
async def qemu_backend(
    vm_state_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[TrackingBackend]:
    """A QEMU backend on the session state dir; teardown destroys its VMs and proves no leak."""
    backend = TrackingBackend(state_dir=vm_state_dir)
    backend.created = []
    yield backend
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for vm in backend.created:
            print(f"--- console of {vm.id} ({vm.state}) ---\n{backend.console_tail(vm, 60)}")
    for vm in backend.created:
        await backend.destroy(vm)
    assert qemu_pids_under(backend.vms_dir) == [], "a QEMU process outlived its test"
    leftovers = list(backend.vms_dir.iterdir()) if backend.vms_dir.exists() else []
    assert leftovers == [], f"VM work directories left behind: {leftovers}"
    assert list(backend.run_dir.glob("*.qmp")) == [], "QMP sockets left behind"
    ours = {names_for(vm.id)[0] for vm in backend.created}
    assert ours.isdisjoint(list_namespaces()), "network namespaces left behind"
    assert not any(name.startswith("hearth-t") for name in list_namespaces()), "template netns left"
    assert backend.networks.pool.claims() == {}, "network slots left claimed"
