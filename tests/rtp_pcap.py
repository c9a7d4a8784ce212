"""A tiny pcap/pcapng writer and packet builder for the RTP tests (independent of agent/rtp)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path


def rtp(seq: int, ts: int, ssrc: int, pt: int = 96, marker: bool = False, payload: bytes = b"\0" * 20,
        csrcs: tuple[int, ...] = (), ext: bytes | None = None, padding: int = 0, version: int = 2) -> bytes:
    b0 = (version << 6) | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | pt
    out = struct.pack("!BBHII", b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        assert len(ext) % 4 == 0
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if padding:
        out += b"\0" * (padding - 1) + bytes([padding])
    return out


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, payload: bytes, proto: int = 17, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 1, frag, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + options + payload


def ipv6(src: str, dst: str, payload: bytes, ext_hops: int = 0) -> bytes:
    """IPv6 with ``ext_hops`` hop-by-hop/destination-option headers (8 bytes each) before UDP."""
    exts = b""
    nh = 17
    for _ in range(ext_hops):
        exts = struct.pack("!BB6x", nh, 0) + exts
        nh = 60
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(exts) + len(payload), nh, 64,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return hdr + exts + payload


def ether(ip: bytes, vlans: tuple[int, ...] = (), ethertype: int | None = None) -> bytes:
    et = ethertype if ethertype is not None else (0x86DD if ip[0] >> 4 == 6 else 0x0800)
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if i == 0 and len(vlans) > 1 else 0x8100
        tags += struct.pack("!HH", tpid, vid)
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + tags + struct.pack("!H", et) + ip


def sll(ip: bytes) -> bytes:
    et = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", et) + ip


def sll2(ip: bytes) -> bytes:
    et = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", et, 0, 1, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + ip


def rtp_v4(src: str, sport: int, dst: str, dport: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    return ether(ipv4(src, dst, udp(sport, dport, payload)), vlans)


@dataclass
class Capture:
    """Packets with timestamps; written as pcap or pcapng."""

    linktype: int = 1
    packets: list[tuple[float, bytes]] = field(default_factory=list)

    def add(self, t: float, frame: bytes) -> None:
        self.packets.append((t, frame))

    def pcap(self, endian: str = "<", nanos: bool = False, snaplen: int = 65535) -> bytes:
        magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
        out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, self.linktype)]
        scale = 1_000_000_000 if nanos else 1_000_000
        for t, frame in self.packets:
            total = round(t * scale)
            cap = frame[:snaplen]
            out.append(struct.pack(endian + "IIII", total // scale, total % scale, len(cap), len(frame)) + cap)
        return b"".join(out)

    def pcapng(self, endian: str = "<", tsresol: int | None = None) -> bytes:
        """One section, one interface; ``tsresol`` is the if_tsresol option byte (default 6: microseconds)."""
        def block(btype: int, body: bytes) -> bytes:
            body += b"\0" * (-len(body) % 4)
            n = len(body) + 12
            return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)

        shb = block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        opts = b""
        if tsresol is not None:
            opts = struct.pack(endian + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(endian + "HH", 0, 0)
        idb = block(1, struct.pack(endian + "HHI", self.linktype, 0, 65535) + opts)
        if tsresol is None or tsresol == 6:
            scale = 1_000_000
        elif tsresol & 0x80:
            scale = 2 ** (tsresol & 0x7F)
        else:
            scale = 10**tsresol
        out = [shb, idb]
        for t, frame in self.packets:
            ticks = round(t * scale)
            out.append(block(6, struct.pack(endian + "IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                                            len(frame)) + frame))
        return b"".join(out)

    def write(self, path: Path, fmt: str = "pcap", **kw: object) -> Path:
        path.write_bytes(self.pcap(**kw) if fmt == "pcap" else self.pcapng(**kw))  # type: ignore[arg-type]
        return path
