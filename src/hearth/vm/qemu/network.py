"""The network namespaces of QEMU VMs in network mode ``netns``: one pool slot per VM."""

from __future__ import annotations

from pathlib import Path

from hearth.network.namespace import NetworkSlot, close_namespace, names_for, open_namespace
from hearth.network.pool import SlotPool
from hearth.vm.types import GuestForward


class QemuNetworks:
    """Claims a slot and builds a namespace per VM; frees both, also after a restart. The
    ``ip``/``nft`` work runs in worker threads, off the event loop (``open_namespace``)."""

    def __init__(self, *, cidr: str, claims_dir: Path) -> None:
        self.pool = SlotPool(cidr=cidr, claims_dir=claims_dir)
        self._networks: dict[str, NetworkSlot] = {}

    async def create(self, vm_id: str, forwards: tuple[GuestForward, ...] = ()) -> NetworkSlot:
        """A slot and a namespace for ``vm_id`` (with its guest ``forwards`` to loopback);
        neither stays if the namespace fails or the caller is cancelled meanwhile."""
        network = await open_namespace(self.pool, vm_id, forwards)
        self._networks[vm_id] = network
        return network

    async def delete(self, vm_id: str, record: dict[str, object] | None) -> None:
        """Remove the VM's namespace and free its slot; ``record`` names the slot of a VM
        this process did not create (found again after a restart)."""
        network = self._networks.pop(vm_id, None)
        if network is None and record and record.get("slot") is not None:
            network = self._slot_network(vm_id, int(str(record["slot"])))
        if network is not None:
            await close_namespace(self.pool, network, vm_id)

    async def reap(self, keep: set[str]) -> list[str]:
        """Delete the namespace and free the slot of every owner not in ``keep``."""
        reaped = []
        for index, owner in self.pool.claims().items():
            if owner not in keep:
                await close_namespace(self.pool, self._slot_network(owner, index), owner)
                reaped.append(owner)
        return reaped

    def _slot_network(self, vm_id: str, index: int) -> NetworkSlot:
        netns, host_veth = names_for(vm_id)
        return NetworkSlot(netns=netns, host_veth=host_veth, slot=self.pool.addresses(index))
