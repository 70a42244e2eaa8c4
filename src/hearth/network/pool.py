"""Address slots for per-VM namespaces, claimed as files so they survive a controller restart."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import Conflict, InvalidInput

DEFAULT_POOL = "169.254.0.0/16"
# The first /30 of the pool is never handed out (169.254.0.0/30 holds the network address).
_FIRST_SLOT = 1


@dataclass(frozen=True)
class SlotAddresses:
    """The /30 of one slot: the root-namespace end and the VM-namespace end of its veth pair."""

    index: int
    host_ip: str  # root namespace side: where the controller's packets come from
    agent_ip: str  # VM namespace side: where the controller reaches the agent (DNAT'ed inside)
    prefix: int = 30


class SlotPool:
    """Hands out /30 slots of a CIDR; a slot is claimed by creating ``<dir>/<index>``."""

    def __init__(self, *, cidr: str = DEFAULT_POOL, claims_dir: Path) -> None:
        try:
            self.network = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            raise InvalidInput(f"network pool {cidr!r} is not an IPv4 CIDR: {exc}") from exc
        if self.network.prefixlen > 29:
            raise InvalidInput(f"network pool {cidr} is too small; use /29 or larger")
        self.claims_dir = claims_dir
        self.size = self.network.num_addresses // 4

    def addresses(self, index: int) -> SlotAddresses:
        """The addresses of slot ``index``."""
        base = int(self.network.network_address) + 4 * index
        return SlotAddresses(
            index=index,
            host_ip=str(ipaddress.IPv4Address(base + 1)),
            agent_ip=str(ipaddress.IPv4Address(base + 2)),
        )

    def claim(self, owner: str) -> SlotAddresses:
        """Claim the lowest free slot for ``owner`` (a VM id)."""
        self.claims_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for index in range(_FIRST_SLOT, self.size):
            path = self.claims_dir / str(index)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(owner)
            return self.addresses(index)
        raise Conflict(f"network pool {self.network} has no free slot ({self.size - 1} in use)")

    def release(self, index: int, owner: str) -> None:
        """Release slot ``index`` if ``owner`` holds it (idempotent)."""
        path = self.claims_dir / str(index)
        try:
            if path.read_text() == owner:
                path.unlink()
        except FileNotFoundError:
            pass

    def claims(self) -> dict[int, str]:
        """Every claimed slot and its owner."""
        if not self.claims_dir.is_dir():
            return {}
        found = {}
        for path in self.claims_dir.iterdir():
            if path.name.isdigit():
                try:
                    found[int(path.name)] = path.read_text()
                except OSError:
                    continue
        return found
