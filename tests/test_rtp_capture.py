"""Capture decoding: pcap/pcapng variants, link types, VLAN, IPv6, and broken files (analyze-pcap's view)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rtp_pcap import Capture, ether, ipv4, ipv6, rtp, rtp_v4, sll, sll2, udp

from agent.rtp.analyzer import Analyzer
from agent.rtp.decode import DAMAGED, OK, SKIP, flow_endpoints, locate_udp
from agent.rtp.offline import analyze_file
from agent.rtp.pcapfile import CaptureError, open_capture

T0 = 1_700_000_000.0


def simple(n: int = 5, ssrc: int = 0x11223344, wrap: bool = False) -> list[tuple[float, bytes]]:
    """n packets 20 ms apart, PT 0 (8000 Hz), seq from 10 (or 65533 to wrap)."""
    first = 65533 if wrap else 10
    return [(T0 + i * 0.02, rtp(first + i, 1000 + 160 * i, ssrc, pt=0, payload=b"\xaa" * 160)) for i in range(n)]


def analyze_bytes(tmp_path: Path, data: bytes, **kw: Any) -> Analyzer:
    p = tmp_path / "c.cap"
    p.write_bytes(data)
    return analyze_file(p, **kw)


def one_stream(an: Analyzer) -> dict[str, Any]:
    streams = [s.summary() for s in an.reported()]
    assert len(streams) == 1, streams
    return streams[0]


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, endian: str, nanos: bool) -> None:
    c = Capture()
    for t, pkt in simple():
        c.add(t + 0.000000123 * nanos, rtp_v4("192.0.2.1", 5004, "192.0.2.2", 6004, pkt))
    s = one_stream(analyze_bytes(tmp_path, c.pcap(endian=endian, nanos=nanos)))
    assert (s["src"], s["src_port"], s["dst"], s["dst_port"]) == ("192.0.2.1", 5004, "192.0.2.2", 6004)
    assert s["packets"] == 5 and s["lost"] == 0 and s["ssrc"] == 0x11223344 and s["payload_type"] == 0
    assert s["bytes"] == 5 * 172
    # the timestamp survives with the file's resolution
    assert s["first_time"] == pytest.approx(T0 + (0.000000123 if nanos else 0), abs=2e-7 if nanos else 1e-9)
    assert s["max_delta_ms"] == pytest.approx(20.0, abs=1e-3)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("tsresol", [None, 9, 0x80 | 20])
def test_pcapng_byte_orders_and_tsresol(tmp_path: Path, endian: str, tsresol: int | None) -> None:
    c = Capture()
    for t, pkt in simple():
        c.add(t, rtp_v4("192.0.2.1", 5004, "192.0.2.2", 6004, pkt))
    s = one_stream(analyze_bytes(tmp_path, c.pcapng(endian=endian, tsresol=tsresol)))
    assert s["packets"] == 5
    assert s["first_time"] == pytest.approx(T0, abs=1e-5)
    assert s["last_time"] - s["first_time"] == pytest.approx(0.08, abs=1e-5)


def test_pcapng_two_sections_switch_byte_order_and_interfaces(tmp_path: Path) -> None:
    """A second section (other byte order, link type SLL) continues the same stream."""
    first, second = Capture(), Capture(linktype=113)
    pkts = simple(6)
    for t, pkt in pkts[:3]:
        first.add(t, rtp_v4("192.0.2.1", 5004, "192.0.2.2", 6004, pkt))
    for t, pkt in pkts[3:]:
        second.add(t, sll(ipv4("192.0.2.1", "192.0.2.2", udp(5004, 6004, pkt))))
    s = one_stream(analyze_bytes(tmp_path, first.pcapng("<") + second.pcapng(">")))
    assert s["packets"] == 6 and s["lost"] == 0 and s["max_delta_ms"] == pytest.approx(20, abs=1e-3)


@pytest.mark.parametrize("linktype,frame", [
    (113, lambda ip: sll(ip)),
    (276, lambda ip: sll2(ip)),
    (101, lambda ip: ip),
    (228, lambda ip: ip),
    (1, lambda ip: ether(ip, vlans=(100,))),
    (1, lambda ip: ether(ip, vlans=(200, 100))),  # 802.1ad outer + 802.1Q inner (QinQ)
])
def test_link_types_and_vlan_tags(tmp_path: Path, linktype: int, frame: Any) -> None:
    c = Capture(linktype=linktype)
    for t, pkt in simple(wrap=True):
        c.add(t, frame(ipv4("198.51.100.7", "198.51.100.8", udp(40000, 40002, pkt))))
    s = one_stream(analyze_bytes(tmp_path, c.pcap()))
    assert (s["src"], s["src_port"], s["dst"], s["dst_port"]) == ("198.51.100.7", 40000, "198.51.100.8", 40002)
    assert s["packets"] == 5 and s["expected"] == 5 and s["lost"] == 0


@pytest.mark.parametrize("linktype,wrap", [(1, lambda ip: ether(ip)), (113, sll), (276, sll2), (229, lambda ip: ip)])
def test_ipv6_with_extension_headers(tmp_path: Path, linktype: int, wrap: Any) -> None:
    c = Capture(linktype=linktype)
    for i, (t, pkt) in enumerate(simple()):
        c.add(t, wrap(ipv6("2001:db8::1", "2001:db8::2", udp(5004, 5006, pkt), ext_hops=i % 3)))
    s = one_stream(analyze_bytes(tmp_path, c.pcap()))
    assert (s["src"], s["dst"], s["src_port"], s["dst_port"]) == ("2001:db8::1", "2001:db8::2", 5004, 5006)
    assert s["packets"] == 5


def test_ipv4_options_and_fragments(tmp_path: Path) -> None:
    c = Capture()
    pkts = simple(5)
    for i, (t, pkt) in enumerate(pkts):
        opts = b"\x01\x01\x01\x00" if i % 2 else b""  # NOP NOP NOP EOL
        c.add(t, ether(ipv4("192.0.2.1", "192.0.2.2", udp(5004, 6004, pkt), options=opts)))
    # a non-first fragment whose payload happens to look like RTP of the same stream: must be skipped
    c.add(T0 + 0.5, ether(ipv4("192.0.2.1", "192.0.2.2", udp(5004, 6004, rtp(15, 0, 0x11223344, pt=0)),
                               frag=0x0010)))
    s = one_stream(analyze_bytes(tmp_path, c.pcap()))
    assert s["packets"] == 5 and s["src_port"] == 5004


def test_locate_udp_unit() -> None:
    frame = ether(ipv4("10.1.2.3", "10.4.5.6", udp(1, 2, b"x" * 12)), vlans=(7,))
    status, key, u = locate_udp(frame, 0, len(frame), 1)
    assert status == OK and u == 14 + 4 + 20
    assert flow_endpoints(key) == ("10.1.2.3", 1, "10.4.5.6", 2)
    assert locate_udp(frame, 0, 30, 1)[0] == DAMAGED  # IP header cut short
    tcp = ether(ipv4("10.1.2.3", "10.4.5.6", b"\0" * 20, proto=6))
    assert locate_udp(tcp, 0, len(tcp), 1)[0] == SKIP
    arp = ether(b"\0" * 28, ethertype=0x0806)
    assert locate_udp(arp, 0, len(arp), 1)[0] == SKIP
    assert locate_udp(frame, 0, len(frame), 147)[0] == SKIP  # unknown link type


# --- broken files ---------------------------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "analyze-pcap", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("data,message", [
    (b"", "file is empty at byte offset 0"),
    (b"\xd4\xc3", "file too short for a capture header (2 bytes) at byte offset 0"),
    (b"GIF89a" + b"\0" * 40, "not a pcap or pcapng file (magic 47494638) at byte offset 0"),
    (struct.pack("<I", 0xA1B2C3D4) + b"\0" * 10, "pcap file header truncated (14 of 24 bytes) at byte offset 14"),
    (struct.pack("<IHH", 0xA1B2C3D4, 3, 0) + b"\0" * 16, "unsupported pcap version 3 at byte offset 4"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147), "unsupported link type 147 at byte offset 20"),
    (struct.pack("<II", 0x0A0D0D0A, 28) + b"\x11\x22\x33\x44" + b"\0" * 16,
     "pcapng byte-order magic 11223344 is neither 1a2b3c4d nor 4d3c2b1a at byte offset 8"),
    (struct.pack("<III", 0x0A0D0D0A, 28, 0x1A2B3C4D) + b"\0" * 4, "pcapng section header truncated (16 of 28 bytes)"
     " at byte offset 0"),
])
def test_broken_file_header_is_a_clear_error_with_exit_2(tmp_path: Path, data: bytes, message: str) -> None:
    p = tmp_path / "broken.pcap"
    p.write_bytes(data)
    r = cli(str(p))
    assert r.returncode == 2
    assert r.stderr.strip() == f"mogli-agent analyze-pcap: {p}: {message}"
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_file_and_directory(tmp_path: Path) -> None:
    r = cli(str(tmp_path / "nope.pcap"))
    assert r.returncode == 2 and "nope.pcap: No such file or directory" in r.stderr
    r = cli(str(tmp_path))
    assert r.returncode == 2 and "Is a directory" in r.stderr and "Traceback" not in r.stderr


def test_bad_option_values_exit_2(tmp_path: Path) -> None:
    r = cli("--clock-rate", "fast", str(tmp_path / "x.pcap"))
    assert r.returncode == 2 and "'fast' is not a number" in r.stderr


def _good_capture(fmt: str) -> bytes:
    c = Capture()
    for t, pkt in simple(10):
        c.add(t, rtp_v4("192.0.2.1", 5004, "192.0.2.2", 6004, pkt))
    return c.pcap() if fmt == "pcap" else c.pcapng()


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_tail_keeps_the_packets_before_it(tmp_path: Path, fmt: str) -> None:
    data = _good_capture(fmt)
    frame = 14 + 20 + 8 + 172
    rec = 16 + frame if fmt == "pcap" else 12 + 20 + (frame + 3) // 4 * 4
    cut = data[: len(data) - rec - 7]  # the last record whole gone, the 9th cut 7 bytes short
    p = tmp_path / f"cut.{fmt}"
    p.write_bytes(cut)
    r = cli("--json", str(p))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["streams"][0]["packets"] == 8
    start = len(data) - 2 * rec
    what = "packet record" if fmt == "pcap" else "block"
    assert f"warning: capture truncated: {what} cut short at byte offset {start}" in r.stderr


def test_garbage_record_length_stops_with_offset(tmp_path: Path) -> None:
    data = bytearray(_good_capture("pcap"))
    rec = 16 + 14 + 20 + 8 + 172
    off = 24 + 5 * rec
    struct.pack_into("<I", data, off + 8, 0x7FFFFFFF)
    an = analyze_bytes(tmp_path, bytes(data))
    assert an.problem == f"record length {0x7FFFFFFF} is invalid at byte offset {off}"
    assert one_stream(an)["packets"] == 5


def test_damaged_packets_are_counted_and_skipped(tmp_path: Path) -> None:
    c = Capture()
    pkts = simple(6)
    for i, (t, pkt) in enumerate(pkts):
        frame = rtp_v4("192.0.2.1", 5004, "192.0.2.2", 6004, pkt)
        if i == 2:
            frame = frame[:30]  # Ethernet + 16 bytes of IP header
        c.add(t, frame)
    c.add(T0 + 1, ether(b"\x45" + b"\0" * 10, ethertype=0x0800))  # IPv4 header of 11 bytes
    c.add(T0 + 1, ether(b"\x60" + b"\0" * 20, ethertype=0x86DD))  # IPv6 header of 21 bytes
    c.add(T0 + 1, b"\x02\0\0")  # shorter than an Ethernet header
    an = analyze_bytes(tmp_path, c.pcap())
    assert an.damaged == 4
    assert an.records == 9
    s = one_stream(an)
    assert s["packets"] == 5 and s["lost"] == 1


def test_pcapng_damaged_blocks(tmp_path: Path) -> None:
    data = bytearray(_good_capture("pcapng"))
    # point the 3rd packet block at interface 5, which does not exist
    off = 28 + 20  # SHB + IDB
    frame_block = 12 + 20 + (14 + 20 + 8 + 172 + 3) // 4 * 4
    struct.pack_into("<I", data, off + 2 * frame_block + 8, 5)
    an = analyze_bytes(tmp_path, bytes(data))
    assert an.damaged == 1 and one_stream(an)["packets"] == 9 and an.problem == ""


def test_random_garbage_never_raises(tmp_path: Path) -> None:
    import random

    rnd = random.Random(4)
    good = _good_capture("pcap")
    good_ng = _good_capture("pcapng")
    for i in range(300):
        base = good if i % 2 else good_ng
        data = bytearray(base)
        for _ in range(rnd.randint(1, 30)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if i % 3 == 0:
            data = data[: rnd.randrange(len(data))]
        try:
            info = open_capture(bytes(data))
        except CaptureError:
            continue
        an = Analyzer()
        an.feed(bytes(data), info.start, len(data), info)
        for s in an.reported():
            s.summary()


def test_gzip_compressed_capture(tmp_path: Path) -> None:
    import gzip

    data = _good_capture("pcapng")
    p = tmp_path / "c.pcapng.gz"
    p.write_bytes(gzip.compress(data))
    assert one_stream(analyze_file(p))["packets"] == 10
    p.write_bytes(gzip.compress(data)[:-30])  # cut: the gzip stream ends early
    r = cli(str(p))
    assert r.returncode == 2 and "gzip data is damaged" in r.stderr and "Traceback" not in r.stderr
