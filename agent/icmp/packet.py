"""ICMP echo packets, sans-io: build requests, parse whatever a socket hands back.

No sockets and no clocks here: the engine (agent/icmp/engine.py) moves the bytes.

What a socket returns differs by kind, so every parser takes ``family`` and ``raw``:

=====================  ==========================================  =====================================
socket                 what ``recv`` returns                       identifier
=====================  ==========================================  =====================================
IPv4 datagram (ping)   the ICMP message, no IP header              the kernel's: the socket's "port"
IPv4 raw               the IPv4 header, then the ICMP message      ours
IPv6 datagram / raw    the ICMPv6 message, no IPv6 header          datagram: the kernel's; raw: ours
=====================  ==========================================  =====================================

A datagram socket delivers ICMP errors about our requests through its error
queue (``MSG_ERRQUEUE`` with ``IP_RECVERR``/``IPV6_RECVERR``): the queued data is
our own request and an ancillary ``sock_extended_err`` says what came back.
:func:`parse_errqueue` reads that; raw sockets see the error message itself,
quoting our request, and :func:`parse` reads it.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_FRAG_NEEDED = 4  # code of ICMP_DEST_UNREACH

ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129

# sock_extended_err.ee_origin
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

TOKEN_LEN = 8
"""Bytes at the start of every payload that identify the sending engine (the rest is padding)."""

_HDR = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_EXT_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data


def word_sum(data: bytes) -> int:
    """The ones'-complement sum of ``data`` as big-endian 16-bit words, folded to 16 bits.

    2**16 = 1 (mod 0xFFFF), so the number the bytes spell, modulo 0xFFFF, is that sum
    (with 0xFFFF, not 0, for a non-zero multiple): one big-integer operation in C.
    """
    if len(data) % 2:
        data += b"\0"
    n = int.from_bytes(data, "big")
    r = n % 0xFFFF
    return 0xFFFF if r == 0 and n else r


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    return ~word_sum(data) & 0xFFFF


def checksum_ok(data: bytes | bytearray) -> bool:
    """Whether an ICMP message's checksum is right (``checksum(data) == 0``): its words sum to 0xFFFF, i.e.
    the number its bytes spell, padded to whole words, is a non-zero multiple of 0xFFFF (see
    :func:`word_sum`). The engine checks every reply on a raw IPv4 socket with it."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return n != 0 and n % 0xFFFF == 0


def payload(token: bytes, size: int) -> bytes:
    """``size`` payload bytes: the engine's token, then a fixed pattern (like ping's)."""
    pad = bytes(i & 0xFF for i in range(max(0, size - len(token))))
    return (token + pad)[:size]


def build_echo(family: int, ident: int, seq: int, data: bytes, data_sum: int | None = None) -> bytes:
    """An echo request. IPv4 carries its checksum; for ICMPv6 the kernel fills it in
    (it needs the pseudo header), so it is left 0. ``data_sum`` is ``word_sum(data)`` when
    the caller has it (the engine sends the same payload many times)."""
    ident &= 0xFFFF
    seq &= 0xFFFF
    if family == socket.AF_INET6:
        return _HDR.pack(ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + data
    if data_sum is None:
        data_sum = word_sum(data)  # the 8-byte header keeps the payload's words aligned
    s = (ICMP_ECHO_REQUEST << 8) + ident + seq + data_sum
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return _HDR.pack(ICMP_ECHO_REQUEST, 0, ~s & 0xFFFF, ident, seq) + data


class EchoReply(NamedTuple):  # NamedTuple, not a dataclass: built once per reply, so it must be cheap
    ident: int
    seq: int
    data: bytes  # the payload (our token first, if it is ours)
    ttl: int | None = None  # IPv4 raw only: hop limit left in the reply's IP header


class IcmpError(NamedTuple):
    """An ICMP error quoting one of our echo requests."""

    kind: str  # "unreachable", "time_exceeded", "packet_too_big"
    type: int
    code: int
    ident: int
    seq: int
    dest: str  # the destination of the quoted request
    source: str = ""  # who sent the error (router), when known
    mtu: int = 0  # next-hop MTU for fragmentation needed / packet too big


class Malformed(ValueError):
    """Bytes that cannot be an ICMP message of the expected kind."""


def _ipv4_header(data: bytes) -> tuple[int, int, int]:
    """(header length, protocol, ttl) of an IPv4 header at the start of ``data``."""
    if len(data) < 20:
        raise Malformed(f"IPv4 header truncated ({len(data)} bytes)")
    if data[0] >> 4 != 4:
        raise Malformed(f"not IPv4 (version {data[0] >> 4})")
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        raise Malformed(f"bad IPv4 header length {ihl}")
    return ihl, data[9], data[8]


def _quoted_request(family: int, quoted: bytes) -> tuple[int, int, str] | None:
    """(ident, seq, destination) of the echo request quoted inside an ICMP error;
    None when the error is about some other packet (not an echo request)."""
    if family == socket.AF_INET:
        ihl, proto, _ = _ipv4_header(quoted)
        if proto != socket.IPPROTO_ICMP:
            return None
        dst = socket.inet_ntop(socket.AF_INET, quoted[16:20])
        inner = quoted[ihl:]
        want = ICMP_ECHO_REQUEST
    else:
        if len(quoted) < 40 or quoted[0] >> 4 != 6:
            raise Malformed("quoted IPv6 header truncated or not IPv6")
        if quoted[6] != socket.IPPROTO_ICMPV6:
            return None
        dst = socket.inet_ntop(socket.AF_INET6, quoted[24:40])
        inner = quoted[40:]
        want = ICMP6_ECHO_REQUEST
    if len(inner) < 8:
        raise Malformed("quoted ICMP header truncated")
    typ, _, _, ident, seq = _HDR.unpack_from(inner)
    if typ != want:
        return None
    return ident, seq, dst


_V4_ERRORS = {ICMP_DEST_UNREACH: "unreachable", ICMP_TIME_EXCEEDED: "time_exceeded"}
_V6_ERRORS = {ICMP6_DEST_UNREACH: "unreachable", ICMP6_TIME_EXCEEDED: "time_exceeded",
              ICMP6_PACKET_TOO_BIG: "packet_too_big"}


def parse(data: bytes, family: int, raw: bool, source: str = "") -> EchoReply | IcmpError | None:
    """One received datagram -> an echo reply, an error about our request, or None for
    anything else we ignore (echo requests we see on a raw socket, other ICMP types).

    ``source`` is the sender's address from recvfrom (used for errors).
    Raises :class:`Malformed` for truncated or garbage bytes; on an IPv4 raw socket a bad checksum too.
    """
    ttl: int | None = None
    if family == socket.AF_INET and raw:
        ihl, proto, ttl = _ipv4_header(data)
        if proto != socket.IPPROTO_ICMP:
            raise Malformed(f"not ICMP (protocol {proto})")
        data = data[ihl:]
    if len(data) < 8:
        raise Malformed(f"ICMP message truncated ({len(data)} bytes)")
    typ, code, _, ident, seq = _HDR.unpack_from(data)
    if family == socket.AF_INET:
        if raw and not checksum_ok(data):  # datagram sockets get only messages the kernel verified
            raise Malformed("bad ICMP checksum")
        if typ == ICMP_ECHO_REPLY:
            return EchoReply(ident, seq, data[8:], ttl)
        kind = _V4_ERRORS.get(typ)
        if kind is None:
            return None
        mtu = struct.unpack_from("!H", data, 6)[0] if typ == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED else 0
    else:  # the kernel verified the ICMPv6 checksum
        if typ == ICMP6_ECHO_REPLY:
            return EchoReply(ident, seq, data[8:])
        kind = _V6_ERRORS.get(typ)
        if kind is None:
            return None
        mtu = struct.unpack_from("!I", data, 4)[0] if typ == ICMP6_PACKET_TOO_BIG else 0
    quoted = _quoted_request(family, data[8:])
    if quoted is None:
        return None
    return IcmpError(kind, typ, code, *quoted, source, mtu)


def parse_errqueue(data: bytes, family: int, ext_err: bytes, dest: str, offender: str = "") -> IcmpError | None:
    """An error-queue message of a datagram socket -> the error about our request.

    ``data`` is our request as sent (the kernel's identifier in it), ``ext_err`` the
    ancillary ``struct sock_extended_err`` (IP_RECVERR / IPV6_RECVERR), ``dest`` the
    msg_name address, ``offender`` the address after the struct (who sent the error).
    Returns None for errors that are not from an ICMP message (e.g. local ones).
    """
    if len(ext_err) < _EXT_ERR.size:
        raise Malformed(f"sock_extended_err truncated ({len(ext_err)} bytes)")
    _, origin, typ, code, _, info, _ = _EXT_ERR.unpack_from(ext_err)
    if len(data) < 8:
        raise Malformed(f"queued request truncated ({len(data)} bytes)")
    rtyp, _, _, ident, seq = _HDR.unpack_from(data)
    if family == socket.AF_INET:
        if origin != SO_EE_ORIGIN_ICMP or rtyp != ICMP_ECHO_REQUEST:
            return None
        kind = _V4_ERRORS.get(typ)
        mtu = info if typ == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED else 0
    else:
        if origin != SO_EE_ORIGIN_ICMP6 or rtyp != ICMP6_ECHO_REQUEST:
            return None
        kind = _V6_ERRORS.get(typ)
        mtu = info if typ == ICMP6_PACKET_TOO_BIG else 0
    if kind is None:
        return None
    return IcmpError(kind, typ, code, ident, seq, dest, offender, mtu)


def offender_address(ext_err: bytes) -> str:
    """The address of the ``sockaddr`` that follows ``sock_extended_err`` (SO_EE_OFFENDER), or ""."""
    sa = ext_err[_EXT_ERR.size:]
    if len(sa) >= 8 and struct.unpack_from("=H", sa)[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, sa[4:8])
    if len(sa) >= 24 and struct.unpack_from("=H", sa)[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, sa[8:24])
    return ""
