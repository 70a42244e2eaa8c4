"""SlotNetworks: hearth.network's slots and namespaces, seen as Firecracker networks.

The slot pool is real (its claims directory lives in tmp_path); creating and deleting the
namespace (in ``hearth.network.namespace``) is replaced by a recorder, so nothing here touches
the host's network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.errors import InvalidInput, VmError
from hearth.network import namespace
from hearth.network.namespace import NetworkSlot, names_for
from hearth.network.pool import SlotAddresses, SlotPool
from hearth.vm.firecracker import network as fc_network
from hearth.vm.firecracker.network import GUEST_IDENTITY, FirecrackerNetwork, SlotNetworks
from hearth.vm.types import GuestForward

VM_ID = "vm-5eed"


class RecordingNamespaces:
    """Stands in for create_namespace/delete_namespace: builds the value, records the calls."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.created: list[NetworkSlot] = []
        self.deleted: list[NetworkSlot] = []

    def create(
        self, vm_id: str, slot: SlotAddresses, forwards: tuple[GuestForward, ...] = ()
    ) -> NetworkSlot:
        if self.fail:
            raise VmError("ip netns add: Operation not permitted")
        netns, host_veth = names_for(vm_id)
        network = NetworkSlot(netns=netns, host_veth=host_veth, slot=slot)
        self.created.append(network)
        return network

    def delete(self, network: NetworkSlot) -> None:
        self.deleted.append(network)


@pytest.fixture
def namespaces(monkeypatch: pytest.MonkeyPatch) -> RecordingNamespaces:
    """The recorder, in place of the functions that run ``ip`` and ``nft``."""
    recorder = RecordingNamespaces()
    monkeypatch.setattr(namespace, "create_namespace", recorder.create)
    monkeypatch.setattr(namespace, "delete_namespace", recorder.delete)
    return recorder


@pytest.fixture
def pool(tmp_path: Path) -> SlotPool:
    """A real slot pool whose claims live under tmp_path."""
    return SlotPool(claims_dir=tmp_path / "net" / "slots")


async def test_acquire_maps_a_claimed_slot_to_the_firecracker_network(
    pool: SlotPool, namespaces: RecordingNamespaces
) -> None:
    network = await SlotNetworks(pool=pool).acquire(VM_ID, allow_egress=False)
    assert pool.claims() == {1: VM_ID}
    (created,) = namespaces.created
    assert network == FirecrackerNetwork(
        netns="hearth-5eed",
        agent_host="169.254.0.6",
        tap="tap0",
        guest_mac="06:00:0a:00:02:0f",
        guest_ip="10.0.2.15",
        gateway="10.0.2.2",
        prefix_len=24,
        agent_port=8080,
        host_veth="hv5eed",
        slot=1,
        owner=VM_ID,
    )
    assert network.agent_url == created.agent_url == "http://169.254.0.6:8080"
    assert network.guest_cidr == "10.0.2.15/24"
    assert network.guest_identity == GUEST_IDENTITY


async def test_release_after_a_restart_deletes_the_namespace_and_frees_the_slot(
    pool: SlotPool, namespaces: RecordingNamespaces
) -> None:
    """A fresh provider on the same claims directory tears down from the record alone."""
    recorded = (await SlotNetworks(pool=pool).acquire(VM_ID, allow_egress=False)).to_dict()
    restarted = SlotNetworks(pool=SlotPool(claims_dir=pool.claims_dir))
    await restarted.release(FirecrackerNetwork.from_dict(recorded))
    assert namespaces.deleted == namespaces.created
    assert pool.claims() == {}
    await restarted.release(FirecrackerNetwork.from_dict(recorded))  # idempotent
    assert pool.claims() == {}


async def test_release_leaves_a_slot_another_vm_has_claimed_since(
    pool: SlotPool, namespaces: RecordingNamespaces
) -> None:
    networks = SlotNetworks(pool=pool)
    stale = await networks.acquire(VM_ID, allow_egress=False)
    await networks.release(stale)
    assert (await networks.acquire("vm-0the4", allow_egress=False)).slot == stale.slot
    await networks.release(stale)
    assert pool.claims() == {1: "vm-0the4"}


async def test_a_failed_namespace_gives_its_slot_back_and_leaves_the_name_alone(
    pool: SlotPool, namespaces: RecordingNamespaces
) -> None:
    # create_namespace removes what it made before failing; a namespace of that name that
    # stopped it is another VM's (names keep 36 bits of the id) and must stay.
    namespaces.fail = True
    with pytest.raises(VmError, match="Operation not permitted"):
        await SlotNetworks(pool=pool).acquire(VM_ID, allow_egress=False)
    assert namespaces.deleted == []
    assert pool.claims() == {}


async def test_a_tap_that_cannot_be_handed_to_the_jailed_vmm_takes_the_namespace_down(
    pool: SlotPool, namespaces: RecordingNamespaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(netns: str, uid: int, gid: int) -> None:
        raise VmError(f"ip tuntap add in {netns}: Device or resource busy")

    monkeypatch.setattr(fc_network, "_hand_tap_to", refuse)
    with pytest.raises(VmError, match="busy"):
        await SlotNetworks(pool=pool, tap_owner=(1000, 1000)).acquire(VM_ID, allow_egress=False)
    assert namespaces.deleted == namespaces.created
    assert [n.netns for n in namespaces.deleted] == ["hearth-5eed"]
    assert pool.claims() == {}


async def test_egress_is_refused_before_anything_is_claimed(
    pool: SlotPool, namespaces: RecordingNamespaces
) -> None:
    with pytest.raises(InvalidInput, match="egress"):
        await SlotNetworks(pool=pool).acquire(VM_ID, allow_egress=True)
    assert pool.claims() == {}
    assert namespaces.created == []


async def test_release_refuses_a_network_without_a_recorded_slot(
    pool: SlotPool, namespaces: RecordingNamespaces
) -> None:
    with pytest.raises(VmError, match="no slot recorded"):
        await SlotNetworks(pool=pool).release(
            FirecrackerNetwork(netns="hearth-5eed", agent_host="169.254.0.6")
        )
    assert namespaces.deleted == []
