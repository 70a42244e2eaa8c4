"""The node's own addresses, which the egress proxy never dials whatever a name resolves to.

A guest's allowlisted name that resolves (or an IP literal that is) one of the node's own
addresses would carry the guest to the services listening on the node -- the controller's API,
PostgreSQL, the agent relay -- through the proxy. The node's private, loopback and link-local
addresses are refused anyway as not globally reachable (:mod:`hearth.network.addresses`), but a
node with a public address has it on an interface too. So the proxy asks :class:`NodeAddresses`
before it dials: every address of every interface of the node as the kernel lists them
(rtnetlink ``RTM_GETADDR``, what ``ip addr`` shows), re-read at most every ``refresh`` seconds,
plus the unspecified ``0.0.0.0`` and ``::`` (dialling them reaches the node itself).

Loopback addresses are left out of that set: the private-address rule already refuses them, and
it is where an exact ``allow_private`` exception puts a test's stand-in on 127.0.0.1. A pin is
never checked against the set (:mod:`hearth.network.egress`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection

from hearth.logging import get_logger
from hearth.network.addresses import IPAddress, embedded_ipv4, unmapped

# Answers the addresses of the node itself; may raise OSError.
NodeAddressSource = Callable[[], Collection[IPAddress]]

REFRESH_S = 1.0  # an address added to an interface is refused within this long
UNSPECIFIED: frozenset[IPAddress] = frozenset(
    {ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::")}
)

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_DUMP_ATTEMPTS = 3  # a dump the kernel marks interrupted (addresses changed meanwhile) is redone
_RECV_TIMEOUT_S = 2.0

_log = get_logger("network.node_addresses")


def interface_addresses() -> frozenset[IPAddress]:
    """Every IPv4 and IPv6 address on every interface of this network namespace, as the kernel
    lists them (``ip addr``: the local address, not a point-to-point peer); OSError if the kernel
    cannot be asked."""
    for _ in range(_DUMP_ATTEMPTS):
        addresses, interrupted = _dump_addresses()
        if not interrupted:
            return addresses
    raise OSError("the interface address dump kept being interrupted")


def _dump_addresses() -> tuple[frozenset[IPAddress], bool]:
    """One ``RTM_GETADDR`` dump: the addresses, and whether the kernel marked it interrupted."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(_RECV_TIMEOUT_S)
        sock.bind((0, 0))
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        flags = _NLM_F_REQUEST | _NLM_F_DUMP
        sock.send(
            _NLMSGHDR.pack(_NLMSGHDR.size + len(request), _RTM_GETADDR, flags, 1, 0) + request
        )
        found: set[IPAddress] = set()
        interrupted = False
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, msg_flags, _, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError("malformed netlink message")
                body = data[offset + _NLMSGHDR.size : offset + length]
                interrupted |= bool(msg_flags & _NLM_F_DUMP_INTR)
                if kind == _NLMSG_DONE:
                    return frozenset(found), interrupted
                if kind == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", body)
                    raise OSError(-error, "the kernel refused the address dump")
                if kind == _RTM_NEWADDR:
                    address = _local_address(body)
                    if address is not None:
                        found.add(address)
                offset += (length + 3) & ~3


def _local_address(body: bytes) -> IPAddress | None:
    """The local address of one ``RTM_NEWADDR`` message (``IFA_LOCAL``, else ``IFA_ADDRESS``)."""
    family = _IFADDRMSG.unpack_from(body)[0]
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if size is None:
        return None
    attributes: dict[int, bytes] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        attributes[kind] = body[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    raw = attributes.get(_IFA_LOCAL, attributes.get(_IFA_ADDRESS))
    if raw is None or len(raw) != size:
        return None
    return ipaddress.ip_address(raw)


def own_addresses(interfaces: Collection[IPAddress]) -> frozenset[IPAddress]:
    """What the proxy refuses as the node itself: the interfaces' addresses but loopback (left
    to the private-address rule), and the unspecified addresses."""
    return frozenset(a for a in interfaces if not a.is_loopback) | UNSPECIFIED


class NodeAddresses:
    """The node's own addresses (:func:`own_addresses` of ``reader``'s answer), read again once
    ``refresh`` seconds have passed. Safe to share between threads and proxies."""

    def __init__(
        self,
        reader: Callable[[], Collection[IPAddress]] = interface_addresses,
        *,
        refresh: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._known: frozenset[IPAddress] | None = None
        self._read_at = 0.0

    def __call__(self) -> frozenset[IPAddress]:
        """The addresses; OSError only if they were never read (a failed re-read keeps the last
        answer, and is tried again after ``refresh``)."""
        with self._lock:
            now = self._clock()
            if self._known is None or now - self._read_at >= self._refresh:
                try:
                    self._known = own_addresses(self._reader())
                except OSError as exc:
                    if self._known is None:
                        raise
                    _log.warning("node_addresses_unread", error=str(exc))
                self._read_at = now
            return self._known


# Every proxy of the process shares one reader, so a burst of CONNECTs costs one dump a second.
node_addresses = NodeAddresses()


def is_node_address(address: IPAddress, node: Collection[IPAddress]) -> bool:
    """Whether ``address`` leads to one of ``node``'s addresses: itself (without an IPv6 zone),
    or the IPv4 address it carries (IPv4-mapped, NAT64, 6to4)."""
    candidates = {unmapped(address)}
    if isinstance(address, ipaddress.IPv6Address):
        candidates.add(ipaddress.IPv6Address(int(address)))  # fe80::1%eth0 is fe80::1
        embedded = embedded_ipv4(address)
        if embedded is not None:
            candidates.add(embedded)
    return not candidates.isdisjoint(node)
