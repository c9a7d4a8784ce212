"""Link, IP and UDP decoding of one captured packet, sans-io.

``locate_udp(buf, start, end, linktype)`` finds the UDP header of a packet that
lies in ``buf[start:end]`` and returns a flow key (source and destination
address, then source and destination port, as raw bytes) and the UDP header's
offset. The analyser's hot loop inlines the commonest case (Ethernet, IPv4
without options) and calls this for everything else.

Supported: link types Ethernet (1), Linux cooked SLL (113) and SLL2 (276), raw
IP (101, 228 IPv4, 229 IPv6, 12/14 on some BSDs), BSD loopback (0, 108); any
number of 802.1Q / 802.1ad / QinQ VLAN tags; IPv4 with options (non-first
fragments skipped); IPv6 with hop-by-hop, routing, destination-options,
fragment and AH extension headers.
"""

from __future__ import annotations

import ipaddress
import struct

from agent.rtp.pcapfile import Buffer

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset({0, 1, 12, 14, 101, 108, 113, 228, 229, 276})

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})

# locate_udp status codes
OK = 0
SKIP = 1  # not IPv4/IPv6 UDP, or a non-first fragment: not our business
DAMAGED = 2  # headers cut short or inconsistent

_H = struct.Struct("!H")
_IPV6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes


def locate_udp(buf: Buffer, p: int, end: int, linktype: int) -> tuple[int, bytes, int]:
    """(status, flow key, UDP header offset) for the packet in ``buf[p:end]``."""
    if linktype == LINKTYPE_ETHERNET:
        if end - p < 14:
            return DAMAGED, b"", 0
        etype = _H.unpack_from(buf, p + 12)[0]
        q = p + 14
    elif linktype == LINKTYPE_LINUX_SLL:
        if end - p < 16:
            return DAMAGED, b"", 0
        etype = _H.unpack_from(buf, p + 14)[0]
        q = p + 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if end - p < 20:
            return DAMAGED, b"", 0
        etype = _H.unpack_from(buf, p)[0]
        q = p + 20
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if end - p < 5:
            return DAMAGED, b"", 0
        q = p + 4
        etype = _ip_version_ethertype(buf[q])
    elif linktype in (LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if end - p < 1:
            return DAMAGED, b"", 0
        q = p
        etype = _ip_version_ethertype(buf[q])
    else:
        return SKIP, b"", 0
    while etype in VLAN_TPIDS:
        if end - q < 4:
            return DAMAGED, b"", 0
        etype = _H.unpack_from(buf, q + 2)[0]
        q += 4
    if etype == ETH_IPV4:
        return _ipv4(buf, q, end)
    if etype == ETH_IPV6:
        return _ipv6(buf, q, end)
    return SKIP, b"", 0


def _ip_version_ethertype(first: int) -> int:
    v = first >> 4
    return ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else 0


def _ipv4(buf: Buffer, q: int, end: int) -> tuple[int, bytes, int]:
    if end - q < 20:
        return DAMAGED, b"", 0
    vihl = buf[q]
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        return DAMAGED, b"", 0
    if buf[q + 9] != 17:
        return SKIP, b"", 0
    if _H.unpack_from(buf, q + 6)[0] & 0x1FFF:
        return SKIP, b"", 0  # a non-first fragment carries no UDP header
    u = q + ihl
    if end - u < 8:
        return DAMAGED, b"", 0
    return OK, bytes(buf[q + 12 : q + 20]) + bytes(buf[u : u + 4]), u


def _ipv6(buf: Buffer, q: int, end: int) -> tuple[int, bytes, int]:
    if end - q < 40:
        return DAMAGED, b"", 0
    if buf[q] >> 4 != 6:
        return DAMAGED, b"", 0
    nh = buf[q + 6]
    u = q + 40
    for _ in range(8):
        if nh == 17:
            if end - u < 8:
                return DAMAGED, b"", 0
            return OK, bytes(buf[q + 8 : q + 40]) + bytes(buf[u : u + 4]), u
        if end - u < 8:
            return DAMAGED, b"", 0
        if nh in _IPV6_EXT:
            nh, hlen = buf[u], (buf[u + 1] + 1) * 8
        elif nh == 44:  # fragment
            if _H.unpack_from(buf, u + 2)[0] & 0xFFF8:
                return SKIP, b"", 0
            nh, hlen = buf[u], 8
        elif nh == 51:  # authentication header
            nh, hlen = buf[u], (buf[u + 1] + 2) * 4
        else:
            return SKIP, b"", 0
        u += hlen
    return SKIP, b"", 0


def flow_endpoints(key: bytes) -> tuple[str, int, str, int]:
    """(src, src_port, dst, dst_port) from a flow key made by locate_udp or the hot loop."""
    alen = (len(key) - 4) // 2
    sport, dport = struct.unpack_from("!HH", key, 2 * alen)
    src = str(ipaddress.ip_address(key[:alen]))
    dst = str(ipaddress.ip_address(key[alen : 2 * alen]))
    return src, sport, dst, dport
