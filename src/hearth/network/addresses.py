"""Which IP addresses the egress proxy may dial unasked: globally reachable unicast, and no other.

The policy is written out here rather than taken from :mod:`ipaddress`'s ``is_global`` /
``is_private`` flags, whose tables changed between Python releases (3.11 counts the deprecated
site-local ``fec0::/10`` and the documentation prefix ``3fff::/20`` as global) and which say
nothing about an IPv4 address embedded in an IPv6 one. The tables follow IANA's IPv4 and IPv6
Special-Purpose Address Registries (RFC 6890 and its updates): every block there that is not
globally reachable is refused, plus a few that are but that no login provider serves from.

IPv6 is allowed only inside ``2000::/3``, the one block IANA allocates as global unicast, or as
NAT64 (``64:ff9b::/96``, RFC 6052) in front of a public IPv4 address. An IPv6 address that
carries an IPv4 address -- IPv4-mapped (``::ffff:a.b.c.d``), 6to4 (``2002:AABB:CCDD::/48``) or
NAT64 -- is judged by the IPv4 address too, since that is where the packets end up.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# IPv4 blocks that are never dialled unasked.
REFUSED_IPV4: tuple[ipaddress.IPv4Network, ...] = (
    _V4("0.0.0.0/8"),  # "this network" (RFC 791); 0.0.0.0 means any local address
    _V4("10.0.0.0/8"),  # private-use (RFC 1918)
    _V4("100.64.0.0/10"),  # shared address space, carrier-grade NAT (RFC 6598)
    _V4("127.0.0.0/8"),  # loopback (RFC 1122)
    _V4("169.254.0.0/16"),  # link-local, cloud metadata services (RFC 3927)
    _V4("172.16.0.0/12"),  # private-use (RFC 1918)
    # IETF protocol assignments (RFC 6890), all of it: the two anycast services inside that are
    # globally reachable (192.0.0.9 PCP, 192.0.0.10 TURN) are no login provider's endpoint.
    _V4("192.0.0.0/24"),
    _V4("192.0.2.0/24"),  # documentation, TEST-NET-1 (RFC 5737)
    _V4("192.88.99.0/24"),  # 6to4 relay anycast, deprecated (RFC 7526)
    _V4("192.168.0.0/16"),  # private-use (RFC 1918)
    _V4("198.18.0.0/15"),  # benchmarking (RFC 2544)
    _V4("198.51.100.0/24"),  # documentation, TEST-NET-2 (RFC 5737)
    _V4("203.0.113.0/24"),  # documentation, TEST-NET-3 (RFC 5737)
    _V4("224.0.0.0/4"),  # multicast (RFC 5771), including MCAST-TEST-NET 233.252.0.0/24
    _V4("240.0.0.0/4"),  # reserved (RFC 1112), including broadcast 255.255.255.255
)

# Where IPv6 global unicast lives (IANA IPv6 Address Space registry); everything outside it --
# ::/8 (loopback, unspecified, IPv4-compatible, IPv4-mapped), 100::/64 discard-only,
# fc00::/7 unique-local, fe80::/10 link-local, fec0::/10 site-local, ff00::/8 multicast, and
# the unassigned rest -- is refused, but for the NAT64 prefix below.
IPV6_GLOBAL_UNICAST = _V6("2000::/3")

# Blocks inside 2000::/3 that are not globally reachable.
REFUSED_IPV6: tuple[ipaddress.IPv6Network, ...] = (
    # IETF protocol assignments (RFC 2928), all of it: Teredo 2001::/32, benchmarking
    # 2001:2::/48, ORCHID 2001:10::/28 and 2001:20::/28, and a few anycast services that no
    # login provider serves from.
    _V6("2001::/23"),
    _V6("2001:db8::/32"),  # documentation (RFC 3849)
    _V6("3fff::/20"),  # documentation (RFC 9637)
)

# The well-known NAT64 prefix (RFC 6052): globally reachable when the IPv4 address in its last
# 32 bits is. Its local-use sibling 64:ff9b:1::/48 (RFC 8215) lies in ::/8 and is refused.
NAT64_PREFIX = _V6("64:ff9b::/96")
_SIXTOFOUR = _V6("2002::/16")  # 6to4 (RFC 3056): judged by the IPv4 address in bits 16-47


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is globally reachable unicast: the only kind dialled without a pin."""
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in network for network in REFUSED_IPV4)
    embedded = embedded_ipv4(address)
    if embedded is not None:  # the packets end up at the IPv4 address
        return is_public_address(embedded)
    return address in IPV6_GLOBAL_UNICAST and not any(address in net for net in REFUSED_IPV6)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64 or 6to4), if it carries one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIXTOFOUR:
        return address.sixtofour
    return None


def unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) as the IPv4 address it stands for."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
