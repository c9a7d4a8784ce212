"""ICMP echo packets, byte by byte: building, parsing replies and errors, truncated and garbage input."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.icmp import packet as pk
from agent.probes.icmp import stats

V4, V6 = socket.AF_INET, socket.AF_INET6


def ipv4_header(src: str, dst: str, proto: int = 1, ttl: int = 64, total: int = 0) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", pk.checksum(h)) + h[12:]


def ipv6_header(src: str, dst: str, nh: int = 58, plen: int = 8) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, plen, nh, 64,
                       socket.inet_pton(V6, src), socket.inet_pton(V6, dst))


def icmp4(typ: int, code: int, rest: bytes, body: bytes = b"") -> bytes:
    msg = struct.pack("!BBH", typ, code, 0) + rest + body
    return msg[:2] + struct.pack("!H", pk.checksum(msg)) + msg[4:]


# --- checksum and building ------------------------------------------------------------

def test_checksum_rfc1071_example_and_odd_length() -> None:
    assert pk.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D  # RFC 1071, section 3
    assert pk.checksum(b"\x01") == pk.checksum(b"\x01\x00")
    assert pk.checksum(b"") == 0xFFFF


def test_build_ipv4_echo_request_exact_bytes() -> None:
    assert pk.build_echo(V4, 1, 1, b"") == bytes.fromhex("0800f7fd00010001")
    pkt = pk.build_echo(V4, 0xBEEF, 0x10001, b"hello")  # sequence wraps to 16 bits
    assert pkt[:2] == b"\x08\x00" and pkt[4:8] == bytes.fromhex("beef0001") and pkt[8:] == b"hello"
    assert pk.checksum(pkt) == 0, "a correct checksum makes the sum over the message 0"


def test_build_ipv6_echo_request_leaves_checksum_to_the_kernel() -> None:
    assert pk.build_echo(V6, 0x1234, 7, b"ab") == bytes.fromhex("800000001234" "0007") + b"ab"


def test_payload_starts_with_token_and_has_requested_size() -> None:
    tok = b"\xaa" * pk.TOKEN_LEN
    assert pk.payload(tok, 56)[:8] == tok and len(pk.payload(tok, 56)) == 56
    assert pk.payload(tok, 8) == tok
    assert len(pk.payload(tok, 1400)) == 1400


# --- echo replies ------------------------------------------------------------------

REPLY4 = icmp4(0, 0, struct.pack("!HH", 0x4242, 513), b"TOKENTOKpadding")
RAW_REPLY4 = ipv4_header("127.0.0.1", "127.0.0.1", ttl=63) + REPLY4


def test_parse_ipv4_raw_reply_skips_ip_header_and_reads_ttl() -> None:
    ev = pk.parse(RAW_REPLY4, V4, raw=True)
    assert ev == pk.EchoReply(0x4242, 513, b"TOKENTOKpadding", ttl=63)


def test_parse_ipv4_datagram_reply_has_no_ip_header() -> None:
    assert pk.parse(REPLY4, V4, raw=False) == pk.EchoReply(0x4242, 513, b"TOKENTOKpadding")
    with pytest.raises(pk.Malformed, match="not IPv4"):
        pk.parse(REPLY4, V4, raw=True)  # the same bytes on a raw socket: the IP header is missing


def test_parse_ipv6_reply() -> None:
    msg = bytes.fromhex("81000000abcd0002") + b"xyz"
    assert pk.parse(msg, V6, raw=True) == pk.EchoReply(0xABCD, 2, b"xyz")
    assert pk.parse(msg, V6, raw=False) == pk.EchoReply(0xABCD, 2, b"xyz")


def test_raw_socket_bad_checksum_is_malformed() -> None:
    bad = bytearray(RAW_REPLY4)
    bad[-1] ^= 0xFF
    with pytest.raises(pk.Malformed, match="checksum"):
        pk.parse(bytes(bad), V4, raw=True)


def test_ignored_messages_return_none() -> None:
    # our own echo request seen on a raw socket, and an unrelated type (timestamp request)
    assert pk.parse(ipv4_header("127.0.0.1", "127.0.0.1") + pk.build_echo(V4, 1, 1, b"x"), V4, raw=True) is None
    assert pk.parse(icmp4(13, 0, b"\0\1\0\1"), V4, raw=False) is None
    assert pk.parse(bytes.fromhex("80000000abcd0002"), V6, raw=True) is None  # ICMPv6 echo request
    assert pk.parse(bytes.fromhex("87000000" "00000000") + bytes(16), V6, raw=True) is None  # neighbour solicit.


def test_non_icmp_protocol_in_raw_ipv4_is_malformed() -> None:
    with pytest.raises(pk.Malformed, match="protocol 17"):
        pk.parse(ipv4_header("127.0.0.1", "127.0.0.1", proto=17) + REPLY4, V4, raw=True)


@pytest.mark.parametrize("raw", [True, False])
def test_every_truncation_is_malformed(raw: bool) -> None:
    whole = RAW_REPLY4 if raw else REPLY4
    head = 20 if raw else 0
    for n in range(len(whole)):
        if raw or n < head + 8:  # dgram: the kernel checked lengths; only the header length matters
            with pytest.raises(pk.Malformed):
                pk.parse(whole[:n], V4, raw=raw)


@given(st.binary(max_size=120), st.sampled_from([V4, V6]), st.booleans())
def test_garbage_never_raises_anything_but_malformed(data: bytes, family: int, raw: bool) -> None:
    try:
        ev = pk.parse(data, family, raw)
    except pk.Malformed:
        return
    assert ev is None or isinstance(ev, pk.EchoReply | pk.IcmpError)


# --- ICMP errors quoting our request ------------------------------------------------

def quoted_v4(dst: str, ident: int, seq: int, proto: int = 1) -> bytes:
    return ipv4_header("127.0.0.5", dst, proto=proto, total=28 + 8) + pk.build_echo(V4, ident, seq, b"TOKENTOK")


def test_ipv4_destination_unreachable_quoting_our_request() -> None:
    msg = icmp4(3, 1, b"\0\0\0\0", quoted_v4("192.0.2.7", 0x4242, 99))
    ev = pk.parse(ipv4_header("198.51.100.1", "127.0.0.5") + msg, V4, raw=True, source="198.51.100.1")
    assert ev == pk.IcmpError("unreachable", 3, 1, 0x4242, 99, "192.0.2.7", "198.51.100.1", 0)


def test_ipv4_fragmentation_needed_carries_the_mtu() -> None:
    msg = icmp4(3, 4, struct.pack("!HH", 0, 1400), quoted_v4("192.0.2.7", 1, 2))
    ev = pk.parse(msg, V4, raw=False)
    assert isinstance(ev, pk.IcmpError) and ev.mtu == 1400 and ev.kind == "unreachable"


def test_ipv4_time_exceeded_and_errors_about_other_packets() -> None:
    ev = pk.parse(icmp4(11, 0, b"\0\0\0\0", quoted_v4("192.0.2.9", 5, 6)), V4, raw=False)
    assert isinstance(ev, pk.IcmpError) and (ev.kind, ev.seq, ev.dest) == ("time_exceeded", 6, "192.0.2.9")
    # port unreachable about a UDP packet: not about an echo request of ours
    assert pk.parse(icmp4(3, 3, b"\0\0\0\0", quoted_v4("192.0.2.9", 5, 6, proto=17)), V4, raw=False) is None


def test_ipv4_error_with_truncated_quote_is_malformed() -> None:
    with pytest.raises(pk.Malformed):
        pk.parse(icmp4(3, 1, b"\0\0\0\0", quoted_v4("192.0.2.7", 1, 2)[:24]), V4, raw=False)


def test_ipv6_packet_too_big_and_unreachable() -> None:
    quoted = ipv6_header("2001:db8::1", "2001:db8::7") + pk.build_echo(V6, 0x77, 0xFFFF, b"")
    ev = pk.parse(struct.pack("!BBHI", 2, 0, 0, 1280) + quoted, V6, raw=True, source="2001:db8::fe")
    assert ev == pk.IcmpError("packet_too_big", 2, 0, 0x77, 0xFFFF, "2001:db8::7", "2001:db8::fe", 1280)
    ev = pk.parse(struct.pack("!BBHI", 1, 3, 0, 0) + quoted, V6, raw=False)
    assert isinstance(ev, pk.IcmpError) and (ev.kind, ev.code) == ("unreachable", 3)
    with pytest.raises(pk.Malformed):
        pk.parse(struct.pack("!BBHI", 1, 3, 0, 0) + quoted[:39], V6, raw=False)
    udp = ipv6_header("2001:db8::1", "2001:db8::7", nh=17) + bytes(8)
    assert pk.parse(struct.pack("!BBHI", 1, 4, 0, 0) + udp, V6, raw=False) is None


# --- the datagram socket's error queue -------------------------------------------------

def ext_err(origin: int, typ: int, code: int, info: int = 0, offender: bytes = b"") -> bytes:
    return struct.pack("=IBBBBII", 113, origin, typ, code, 0, info, 0) + offender


SIN_ROUTER = struct.pack("=HH4s8x", V4, 0, socket.inet_aton("198.51.100.1"))
SIN6_ROUTER = struct.pack("=HHI16sI", V6, 0, 0, socket.inet_pton(V6, "2001:db8::fe"), 0)


def test_errqueue_ipv4_unreachable() -> None:
    req = pk.build_echo(V4, 0x9999, 41, b"TOKENTOK")  # as the kernel sent it, with its identifier
    cm = ext_err(pk.SO_EE_ORIGIN_ICMP, 3, 1, offender=SIN_ROUTER)
    assert pk.offender_address(cm) == "198.51.100.1"
    ev = pk.parse_errqueue(req, V4, cm, "192.0.2.7", pk.offender_address(cm))
    assert ev == pk.IcmpError("unreachable", 3, 1, 0x9999, 41, "192.0.2.7", "198.51.100.1", 0)


def test_errqueue_ipv6_packet_too_big_and_local_errors() -> None:
    req = pk.build_echo(V6, 1, 2, b"")
    cm = ext_err(pk.SO_EE_ORIGIN_ICMP6, 2, 0, info=1280, offender=SIN6_ROUTER)
    ev = pk.parse_errqueue(req, V6, cm, "2001:db8::7", pk.offender_address(cm))
    assert ev is not None and (ev.kind, ev.mtu, ev.source) == ("packet_too_big", 1280, "2001:db8::fe")
    assert pk.parse_errqueue(req, V6, ext_err(pk.SO_EE_ORIGIN_LOCAL, 0, 0), "::1") is None


def test_errqueue_truncated() -> None:
    with pytest.raises(pk.Malformed):
        pk.parse_errqueue(pk.build_echo(V4, 1, 2, b""), V4, ext_err(2, 3, 1)[:10], "192.0.2.7")
    with pytest.raises(pk.Malformed):
        pk.parse_errqueue(b"\x08\x00", V4, ext_err(2, 3, 1), "192.0.2.7")
    assert pk.offender_address(ext_err(2, 3, 1)) == ""


# --- round statistics (the gauges) -------------------------------------------------------

def test_round_stats_and_jitter_definition() -> None:
    s = stats([0.010, None, 0.012, 0.011, None], sent=5, duplicates=1)
    assert (s.sent, s.received, s.duplicates) == (5, 3, 1)
    assert s.loss_ratio == pytest.approx(0.4)
    assert (s.rtt_min, s.rtt_max) == (0.010, 0.012)
    assert s.rtt_avg == pytest.approx(0.011)
    assert s.rtt_stddev == pytest.approx((2 / 3 * 1e-6) ** 0.5)
    # consecutive received replies: |12-10| and |11-12| -> mean 1.5 ms (lost packets skipped)
    assert s.jitter == pytest.approx(0.0015)
    one = stats([0.005], sent=1)
    assert one.jitter is None and one.rtt_stddev == 0.0
    none = stats([None, None], sent=2)
    assert none.loss_ratio == 1.0 and none.rtt_avg is None
