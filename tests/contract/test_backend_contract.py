"""What every ``VmBackend`` must do, as the control plane relies on it (``hearth.vm.backend``).

Each test runs against the fake, QEMU (real VMs) and Firecracker (where it can run): the fake is
held to the same rules as the real backends, so tests of the code above the seam that use it
prove something about the product. After every test that passed, the fixture proves the backend
reports no ``leftovers``. That a fresh backend object sees what a live VM holds is true of the
real backends only (they read the host; the fake's leftovers are its memory), so that test runs
on ``host_contract``.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from hearth.agent_client import AgentClient
from hearth.errors import NotSupported, VmError
from hearth.vm.backend import VmBackend
from hearth.vm.host import LEGACY_TOKEN_FILE
from hearth.vm.types import BootMode, Vm, VmState
from tests.contract.conftest import Contract
from tests.files import files_holding

pytestmark = pytest.mark.slow


def test_the_backend_is_a_vm_backend(contract: Contract) -> None:
    assert isinstance(contract.backend, VmBackend)
    assert contract.backend.name
    assert contract.backend.accel.name in ("kvm", "tcg")


async def test_a_created_vm_is_ready_claimed_alive_and_listed_until_destroyed(
    contract: Contract,
) -> None:
    backend = contract.backend
    vm = await backend.create(contract.image, contract.spec)
    assert vm.state is VmState.READY
    assert vm.token, "a VM created with claim=True carries its own token"
    assert vm.ready_at is not None
    assert backend.alive(vm)
    listed = {running.id: running for running in await backend.list_running()}
    # The backend keeps no token: the control plane keeps it, sealed (a listed VM has none).
    assert listed[vm.id].token is None
    assert isinstance(backend.console_tail(vm, 5), str)

    await backend.destroy(vm)
    assert vm.state is VmState.DESTROYED
    assert not backend.alive(vm)
    assert vm.id not in {running.id for running in await backend.list_running()}
    await asyncio.wait_for(backend.wait_exit(vm), 10)  # returns at once for an ended VM
    await backend.destroy(vm)  # idempotent
    assert vm.state is VmState.DESTROYED


async def test_two_vms_get_their_own_ids_and_tokens(contract: Contract) -> None:
    backend = contract.backend
    first, second = await asyncio.gather(
        backend.create(contract.image, contract.spec),
        backend.create(contract.image, contract.spec),
    )
    try:
        assert first.id != second.id
        assert first.token != second.token
    finally:
        await backend.destroy(first)
        await backend.destroy(second)


async def test_an_unclaimed_vm_is_claimed_once(contract: Contract) -> None:
    backend = contract.backend
    vm = await backend.create(contract.image, contract.spec, claim=False)
    try:
        assert vm.state is VmState.READY
        assert vm.token is None, "a pooled VM carries no token until it is handed out"
        token = await backend.claim(vm)
        assert token
        assert vm.token == token
        with pytest.raises(VmError, match="already claimed"):
            await backend.claim(vm)
        assert vm.token == token
    finally:
        await backend.destroy(vm)


async def test_pause_and_resume_move_the_vm_and_keep_it_alive(contract: Contract) -> None:
    backend = contract.backend
    vm = await backend.create(contract.image, contract.spec)
    try:
        await backend.pause(vm)
        assert vm.state is VmState.PAUSED
        assert backend.alive(vm)
        await backend.resume(vm)
        assert vm.state is VmState.READY
        assert backend.alive(vm)
    finally:
        await backend.destroy(vm)


async def test_a_cold_boot_is_a_cold_boot(contract: Contract) -> None:
    backend = contract.backend
    vm = await backend.create(contract.image, contract.spec, boot_mode=BootMode.COLD)
    try:
        assert vm.boot_mode is BootMode.COLD
        assert vm.state is VmState.READY
    finally:
        await backend.destroy(vm)


async def test_reap_destroys_what_is_not_kept_and_keeps_the_rest(contract: Contract) -> None:
    backend = contract.backend
    kept = await backend.create(contract.image, contract.spec)
    stray = await backend.create(contract.image, contract.spec)
    try:
        reaped = await backend.reap(keep={kept.id})
        assert stray.id in reaped
        assert kept.id not in reaped
        running = {vm.id for vm in await backend.list_running()}
        assert kept.id in running
        assert stray.id not in running
    finally:
        await backend.destroy(kept)
        await backend.destroy(stray)


async def test_leftovers_name_a_live_vm_and_nothing_once_it_is_destroyed(
    contract: Contract,
) -> None:
    backend = contract.backend
    vm = await backend.create(contract.image, contract.spec)
    try:
        held = backend.leftovers()
        assert any(vm.id in line for line in held), held
    finally:
        await backend.destroy(vm)
    assert backend.leftovers() == []


async def test_leftovers_are_read_from_the_host_by_a_fresh_backend(host_contract: Contract) -> None:
    backend = host_contract.backend
    assert host_contract.reopen is not None
    vm = await backend.create(host_contract.image, host_contract.spec)
    try:
        fresh = host_contract.reopen()
        held = fresh.leftovers()
        assert [line for line in held if vm.id in line and "process" in line], held
        assert [line for line in held if vm.id in line and "work directory" in line], held
    finally:
        await backend.destroy(vm)
    assert fresh.leftovers() == []


async def test_no_agent_token_is_kept_in_clear_on_the_host(host_contract: Contract) -> None:
    backend = host_contract.backend
    assert host_contract.reopen is not None
    vm = await backend.create(host_contract.image, host_contract.spec)
    try:
        assert vm.token is not None
        assert vm.workdir is not None
        assert files_holding(vm.workdir, vm.token.encode()) == []
        # A token an older controller kept in clear in the work dir is read once by a fresh
        # backend (the control plane then seals it) and removed by the reap that keeps the VM.
        (vm.workdir / LEGACY_TOKEN_FILE).write_text(vm.token)
        fresh = host_contract.reopen()
        [listed] = [found for found in await fresh.list_running() if found.id == vm.id]
        assert listed.token == vm.token
        assert vm.id not in await fresh.reap(keep={vm.id})
        assert files_holding(vm.workdir, vm.token.encode()) == []
    finally:
        await backend.destroy(vm)


async def test_a_hibernated_vm_ends_its_vmm_keeps_its_files_and_wakes_with_its_token(
    contract: Contract,
) -> None:
    """Or, for a backend that cannot hibernate, NotSupported with the VM left running."""
    backend = contract.backend
    vm = await backend.create(contract.image, contract.spec)
    token, disk_key, workdir = vm.token, vm.disk_key, vm.workdir
    try:
        state_key = secrets.token_bytes(32)
        await backend.hibernate(vm, state_key)
    except NotSupported:
        assert not backend.can_hibernate, "a backend that says it can hibernate refused to"
        assert vm.state is VmState.READY
        assert backend.alive(vm)
        await backend.destroy(vm)
        return
    assert backend.can_hibernate, "a backend that says it cannot hibernate did"
    assert vm.state is VmState.HIBERNATED
    assert not backend.alive(vm)
    assert vm.id not in {running.id for running in await backend.list_running()}
    assert backend.leftovers(), "a hibernated VM's files must stay"
    assert await backend.reap(keep={vm.id}) == []

    def asleep() -> Vm:
        """The VM as the control plane keeps it: id, spec, work dir, token and keys."""
        return Vm(
            id=vm.id,
            spec=contract.spec,
            backend=backend.name,
            state=VmState.HIBERNATED,
            token=token,
            disk_key=disk_key,
            workdir=workdir,
        )

    # A wake its controller did not see begin (its saved state untouched) settles hibernated.
    assert await backend.settle_wake(asleep()) is VmState.HIBERNATED
    woken = await backend.wake(asleep(), state_key)
    try:
        assert woken.state is VmState.READY
        assert backend.alive(woken)
        if woken.agent_url is not None:  # the fake has no agent
            assert (await AgentClient(woken.agent_url, token).version())["version"]
        # One whose VMM runs from the consumed state settles paused, and resumes.
        assert await backend.settle_wake(woken) is VmState.PAUSED
        assert woken.state is VmState.PAUSED
        await backend.resume(woken)
        assert backend.alive(woken)
    finally:
        await backend.destroy(woken)
    # One whose state was consumed and whose VMM is gone cannot be had back.
    assert await backend.settle_wake(asleep()) is VmState.FAILED
