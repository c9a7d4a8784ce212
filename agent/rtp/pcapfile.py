"""Capture file framing, sans-io: pcap and pcapng headers and blocks from a buffer.

Nothing here opens files: callers pass any buffer (bytes, mmap, memoryview) and
offsets. The per-packet walk over records lives in the analyser's hot loop
(agent/rtp/analyzer.py); this module parses the file header, pcapng interface
descriptions and section headers, and names what is wrong, and where.

Formats:
- pcap: magic a1b2c3d4 (microseconds) or a1b23c4d (nanoseconds), either byte order.
- pcapng: Section Header, Interface Description (link type per interface,
  ``if_tsresol``, ``if_tsoffset``), Enhanced/Simple/obsolete Packet Blocks; other
  blocks are skipped. A new Section Header may switch byte order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

Buffer = Any  # bytes | bytearray | memoryview | mmap.mmap: anything struct.unpack_from and slicing accept

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB = 1
PCAPNG_OPB = 2  # obsolete Packet Block
PCAPNG_SPB = 3
PCAPNG_EPB = 6

# Largest packet record we accept; anything bigger is a corrupt length field (Wireshark uses 256 KiB too).
MAX_RECORD = 262144


class CaptureError(ValueError):
    """The capture cannot be read (from) here: ``offset`` is the byte offset of the problem."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} at byte offset {offset}")
        self.offset = offset


@dataclass
class Interface:
    linktype: int
    resolution: float = 1e-6  # seconds per timestamp unit
    tsoffset: float = 0.0  # seconds added to every timestamp (if_tsoffset)
    base: int = -1  # the analyser's: first timestamp (ticks) seen on this interface
    shift: float = 0.0  # the analyser's: seconds from its epoch to ``base``


@dataclass
class CaptureInfo:
    """What the file header says: where packets start and how to read them."""

    kind: str  # "pcap" or "pcapng"
    start: int  # offset of the first record / block after the file header
    endian: str  # "<" or ">"
    linktype: int = 0  # pcap: the file's link type
    resolution: float = 1e-6  # pcap: seconds per fractional timestamp unit
    interfaces: list[Interface] = field(default_factory=list)  # pcapng: of the current section


def _u32(buf: Buffer, off: int, endian: str) -> int:
    v: int = struct.unpack_from(endian + "I", buf, off)[0]
    return v


def open_capture(buf: Buffer) -> CaptureInfo:
    """Parse the file header. Raises CaptureError naming the byte offset of what is wrong."""
    n = len(buf)
    if n < 4:
        raise CaptureError(f"file too short for a capture header ({n} bytes)", 0)
    magic_le = _u32(buf, 0, "<")
    if magic_le == PCAPNG_SHB:
        info = CaptureInfo("pcapng", 0, "<")
        info.start = read_section_header(buf, 0, n, info)
        return info
    for endian in "<>":
        magic = _u32(buf, 0, endian)
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            if n < 24:
                raise CaptureError(f"pcap file header truncated ({n} of 24 bytes)", n)
            major = struct.unpack_from(endian + "H", buf, 4)[0]
            if major != 2:
                raise CaptureError(f"unsupported pcap version {major}", 4)
            linktype = _u32(buf, 20, endian) & 0x0FFFFFFF  # upper bits: FCS length flags
            res = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
            return CaptureInfo("pcap", 24, endian, linktype=linktype, resolution=res)
    raise CaptureError(f"not a pcap or pcapng file (magic {bytes(buf[0:4]).hex()})", 0)


def read_section_header(buf: Buffer, off: int, end: int, info: CaptureInfo) -> int:
    """Parse a pcapng Section Header Block at ``off``; set byte order, reset interfaces; return the next offset."""
    if end - off < 28:
        raise CaptureError(f"pcapng section header truncated ({end - off} of 28 bytes)", off)
    bom = buf[off + 8 : off + 12]
    if bytes(bom) == b"\x4d\x3c\x2b\x1a":
        endian = "<"
    elif bytes(bom) == b"\x1a\x2b\x3c\x4d":
        endian = ">"
    else:
        raise CaptureError(f"pcapng byte-order magic {bytes(bom).hex()} is neither 1a2b3c4d nor 4d3c2b1a", off + 8)
    blen = _u32(buf, off + 4, endian)
    if blen < 28 or blen % 4:
        raise CaptureError(f"pcapng section header length {blen} is invalid", off + 4)
    if off + blen > end:
        raise CaptureError(f"pcapng section header truncated ({end - off} of {blen} bytes)", off)
    major = struct.unpack_from(endian + "H", buf, off + 12)[0]
    if major != 1:
        raise CaptureError(f"unsupported pcapng version {major}", off + 12)
    info.endian = endian
    info.interfaces = []
    return int(off + blen)


def _options(buf: Buffer, off: int, end: int, endian: str) -> dict[int, bytes]:
    """pcapng options between ``off`` and ``end`` (first value per code). Stops quietly at damage."""
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, off)
        if code == 0:
            break
        vend = off + 4 + length
        if vend > end:
            break
        out.setdefault(code, bytes(buf[off + 4 : vend]))
        off += 4 + (length + 3) // 4 * 4
    return out


def read_interface(buf: Buffer, off: int, blen: int, endian: str) -> Interface:
    """Parse an Interface Description Block (block starts at ``off``, total length ``blen``)."""
    if blen < 20:
        raise CaptureError(f"pcapng interface description length {blen} is too short", off + 4)
    linktype = struct.unpack_from(endian + "H", buf, off + 8)[0]
    opts = _options(buf, off + 16, off + blen - 4, endian)
    iface = Interface(linktype)
    tsresol = opts.get(9)
    if tsresol:
        v = tsresol[0]
        iface.resolution = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
    tsoff = opts.get(14)
    if tsoff and len(tsoff) >= 8:
        iface.tsoffset = float(struct.unpack_from(endian + "q", tsoff, 0)[0])
    return iface
