"""The Firecracker backend: API client, payload builders, processes/jailer, disks and templates.

Firecracker needs a usable /dev/kvm and its binary on PATH; neither is available on PVM-only
hosts, where the QEMU backend is the one that runs.
"""

from hearth.vm.firecracker.backend import FirecrackerBackend
from hearth.vm.firecracker.client import FirecrackerClient
from hearth.vm.firecracker.disks import CowMechanism
from hearth.vm.firecracker.network import FirecrackerNetwork, NetworkProvider, SlotNetworks
from hearth.vm.firecracker.process import JailerConfig

__all__ = [
    "CowMechanism",
    "FirecrackerBackend",
    "FirecrackerClient",
    "FirecrackerNetwork",
    "JailerConfig",
    "NetworkProvider",
    "SlotNetworks",
]
