"""One contract, every backend: the fake in memory, QEMU for real, Firecracker where it can run.

``contract`` is parametrized by backend; ``host_contract`` only by the real ones, whose
``leftovers`` are read from the host (the fake's are its memory), each with a way to open a
fresh backend object on the same state dir. The QEMU one is the tests/vm fixture (real VMs from
the real minimal image, on the session's state dir, so the snapshot template is built once; its
teardown proves nothing is left). Firecracker runs for real only where ``hearth doctor`` would
say it can (a ``firecracker`` binary, a usable KVM); elsewhere it is skipped with that reason,
and its requests are checked against Firecracker's official API spec in
tests/unit/test_firecracker_contract.py instead. After each test that passed, every backend must
report no ``leftovers``: the test destroyed every VM it made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.vm.backend import VmBackend
from hearth.vm.select import Vmm, check_vmm, open_backend
from hearth.vm.types import NetworkMode, VmSpec
from tests.fake_backend import FakeBackend
from tests.vm.conftest import pytest_runtest_makereport, qemu_backend  # noqa: F401


@dataclass
class Contract:
    """A backend under the contract, the image its VMs boot and the spec they get."""

    backend: VmBackend
    image: ImageDir
    spec: VmSpec
    # A fresh backend object on the same state dir, as a restarted controller opens (the real
    # backends only: a fresh fake knows nothing of the first one's VMs).
    reopen: Callable[[], VmBackend] | None = None


@pytest.fixture(params=["fake", "qemu", "firecracker"])
def contract(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    """Each backend in turn, ready to create VMs (every test destroys what it made; the QEMU
    fixture's teardown also proves nothing of them is left)."""
    yield from _checked(_contract(request.param, request, tmp_path), request)


@pytest.fixture(params=["qemu", "firecracker"])
def host_contract(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    """Each real backend in turn, with ``reopen`` set."""
    yield from _checked(_contract(request.param, request, tmp_path), request)


def _contract(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Contract:
    if kind == "fake":
        return Contract(FakeBackend(), ImageDir(tmp_path / "image"), VmSpec())
    if kind == "qemu":
        request.applymarker(pytest.mark.vm)
        image = request.getfixturevalue("minimal_image")
        qemu = Settings(state_dir=request.getfixturevalue("vm_state_dir"), vmm=Vmm.QEMU.value)
        return Contract(
            request.getfixturevalue("qemu_backend"), image, VmSpec(), lambda: open_backend(qemu)
        )
    settings = Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_VMM": "firecracker",
            "HEARTH_NETWORK_MODE": "netns",
        }
    )
    check = check_vmm(settings, Vmm.FIRECRACKER)
    if not check.ok:
        pytest.skip(f"firecracker cannot run on this host: {check.reason}")
    image = request.getfixturevalue("minimal_image")
    return Contract(
        open_backend(settings),
        image,
        VmSpec(network=NetworkMode.NETNS),
        lambda: open_backend(settings),
    )


def _checked(contract: Contract, request: pytest.FixtureRequest) -> Iterator[Contract]:
    """Yield ``contract``; once its test passed, prove the backend holds nothing more."""
    yield contract
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.passed:
        assert contract.backend.leftovers() == [], "a VM's resources outlived its destroy"
