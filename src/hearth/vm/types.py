"""Value types of the VM layer: specs, states and their transition table, VM records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hearth.errors import InvalidInput, VmStateError


class VmType(StrEnum):
    """What a VM is for."""

    CLI = "cli"  # runs the AI coding CLIs and receives credentials
    BROWSER = "browser"  # runs Chromium for the user's provider login


class NetworkMode(StrEnum):
    """How a VM is attached to the network."""

    USER = "user"  # QEMU user-net; the agent port forwarded to 127.0.0.1; egress restricted
    NETNS = "netns"  # a network namespace per VM with the VM's tap inside it


class BootMode(StrEnum):
    """How a VM got to running."""

    COLD = "cold"  # kernel boot from the golden image
    RESTORE = "restore"  # restored from a template's saved state
    POOL = "pool"  # handed out from the warm pool (itself restored or cold)
    WAKE = "wake"  # woken from its own hibernated state


class LifetimeAction(StrEnum):
    """What ends a VM's lifetime (``timeoutS``) or its idleness (``idleTimeoutS``)."""

    PAUSE = "pause"  # kept in memory, resumed by the next call that needs it (autoResume)
    HIBERNATE = "hibernate"  # saved to disk, its VMM ended; woken by the next call (autoResume)
    DESTROY = "destroy"  # its delivered credentials pulled back first, as a manual destroy


class VmState(StrEnum):
    """Lifecycle of a VM."""

    CREATING = "creating"  # resources (disk, network) being prepared
    BOOTING = "booting"  # VMM running, agent not yet healthy
    READY = "ready"  # agent healthy and claimed with this VM's token
    UNHEALTHY = "unhealthy"  # VMM runs but the agent misses its heartbeats
    PAUSED = "paused"  # vCPUs stopped, memory kept
    HIBERNATING = "hibernating"  # memory and device state being saved to disk
    HIBERNATED = "hibernated"  # saved to disk (encrypted), no VMM process; woken through booting
    STOPPING = "stopping"  # teardown under way
    DESTROYED = "destroyed"  # nothing of it is left
    FAILED = "failed"  # died or never became healthy; error says why


TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    VmState.CREATING: frozenset({VmState.BOOTING, VmState.FAILED, VmState.STOPPING}),
    # A wake that stops short of running leaves the VM hibernated (its saved state untouched).
    VmState.BOOTING: frozenset(
        {VmState.READY, VmState.HIBERNATED, VmState.FAILED, VmState.STOPPING}
    ),
    VmState.READY: frozenset(
        {VmState.PAUSED, VmState.HIBERNATING, VmState.UNHEALTHY, VmState.FAILED, VmState.STOPPING}
    ),
    VmState.UNHEALTHY: frozenset({VmState.READY, VmState.FAILED, VmState.STOPPING}),
    VmState.PAUSED: frozenset(
        {VmState.READY, VmState.HIBERNATING, VmState.FAILED, VmState.STOPPING}
    ),
    # A save that fails leaves the VM as it was (its VMM still runs).
    VmState.HIBERNATING: frozenset(
        {VmState.HIBERNATED, VmState.READY, VmState.PAUSED, VmState.FAILED}
    ),
    VmState.HIBERNATED: frozenset({VmState.BOOTING, VmState.FAILED, VmState.STOPPING}),
    VmState.STOPPING: frozenset({VmState.DESTROYED, VmState.FAILED}),
    VmState.FAILED: frozenset({VmState.STOPPING, VmState.DESTROYED}),
    VmState.DESTROYED: frozenset(),
}


def check_transition(vm_id: str, old: VmState, new: VmState) -> None:
    """Raise VmStateError unless the table allows ``old → new``."""
    if new not in TRANSITIONS[old]:
        raise VmStateError(f"VM {vm_id} cannot go from {old.value} to {new.value}")


MAX_VCPUS = 16
MIN_MEM_MIB = 256
MAX_MEM_MIB = 64 * 1024
# The most a volume slot (or a volume) may hold: 16 TiB.
MAX_VOLUME_MIB = 16 * 1024 * 1024
# The serial of a VM's volume slot's disk (a virtio serial: at most 20 bytes).
SLOT_SERIAL = "hearth-slot"


@dataclass(frozen=True)
class GuestForward:
    """A guest-visible TCP endpoint QEMU user-net connects to a host loopback port.

    This is how a VM with restricted egress reaches exactly one allowed service (e.g. an
    OAuth provider), and nothing else of the host.
    """

    guest_ip: str
    guest_port: int
    host_port: int

    def __post_init__(self) -> None:
        if not (1 <= self.guest_port <= 65535 and 1 <= self.host_port <= 65535):
            raise InvalidInput("forwarded ports must be between 1 and 65535")


@dataclass(frozen=True, kw_only=True)
class VmSpec:
    """What to run: size, type and network policy."""

    vm_type: VmType = VmType.CLI
    vcpus: int = 1
    mem_mib: int = 512
    network: NetworkMode = NetworkMode.USER
    allow_egress: bool = False
    # Guest TCP ports (besides the agent's) forwarded to 127.0.0.1 (e.g. VNC for Browser VMs).
    forward_ports: tuple[int, ...] = ()
    # Allowed guest → host loopback endpoints under restricted egress (user: QEMU's guestfwd;
    # netns: NAT in the VM's namespace, hearth.network.namespace).
    guest_forwards: tuple[GuestForward, ...] = ()
    # A volume slot: an empty disk of this many MiB (serial ``SLOT_SERIAL``) the VM starts with,
    # which a volume of that size then takes without a hot-plug (0: none).
    volume_slot_mib: int = 0

    def __post_init__(self) -> None:
        if self.network is NetworkMode.NETNS and self.forward_ports:
            raise InvalidInput("forwarded guest ports are offered in network mode user only")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise InvalidInput(f"vcpus must be between 1 and {MAX_VCPUS}, got {self.vcpus}")
        if not MIN_MEM_MIB <= self.mem_mib <= MAX_MEM_MIB:
            raise InvalidInput(
                f"mem_mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {self.mem_mib}"
            )
        if not 0 <= self.volume_slot_mib <= MAX_VOLUME_MIB:
            raise InvalidInput(
                f"volume_slot_mib must be between 0 and {MAX_VOLUME_MIB}, "
                f"got {self.volume_slot_mib}"
            )

    @property
    def size_key(self) -> str:
        """Identifies VMs that can share one snapshot template."""
        slot = f"-{self.volume_slot_mib}v" if self.volume_slot_mib else ""
        return f"{self.vm_type.value}-{self.vcpus}c-{self.mem_mib}m{slot}"


@dataclass(frozen=True, kw_only=True)
class Volume:
    """A persistent disk given to a running VM (a user's workspace): its file, the passphrase it
    is encrypted under, and the serial the guest finds it by."""

    path: Path
    key: bytes = field(repr=False)
    serial: str
    # Its size (0: not known, so it never takes a VM's volume slot).
    size_mib: int = 0


@dataclass(kw_only=True)
class Vm:
    """A VM the backend runs: identity, where it is reachable, and how it got there."""

    id: str
    spec: VmSpec
    backend: str
    state: VmState = VmState.CREATING
    agent_url: str | None = None
    token: str | None = field(default=None, repr=False)
    # The passphrase of its encrypted disk layer (None: a plain disk, or not known here).
    disk_key: bytes | None = field(default=None, repr=False)
    pid: int | None = None
    workdir: Path | None = None
    boot_mode: BootMode = BootMode.COLD
    created_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    time_to_healthy_s: float | None = None
    disk_bytes: int | None = None
    error: str | None = None
    agent_version: str | None = None  # as its agent answered the claim
    # Guest port → 127.0.0.1 port, for the spec's forward_ports.
    ports: dict[int, int] = field(default_factory=dict)
    # Volumes attached since it started, in order (a wake attaches them again at start).
    volumes: list[Volume] = field(default_factory=list)

    def move_to(self, new: VmState) -> None:
        """Change state through the transition table."""
        check_transition(self.id, self.state, new)
        self.state = new
