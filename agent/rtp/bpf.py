"""A classic BPF program for the kernel: accept UDP from the configured cameras, drop everything else.

Built here, in Python, at run time (no tcpdump -dd). The program passes only
packets whose source address is a camera's and, when a port is configured, whose
UDP source or destination port is that port; it truncates them to ``snaplen``
bytes (the analyser needs the headers only: sizes come from the UDP length).

Layout: a link-layer dispatch to an IPv4 and an IPv6 section; in each, one small
block per camera that falls through to the next camera on a mismatch and returns
"accept" inline on a match, so every conditional jump stays short (jt/jf are 8
bits); only the dispatch uses ``ja`` (32-bit offsets). Untagged frames only: Linux
hands VLAN tags to packet sockets out of band, so the frame a socket filter sees
has none. IPv4 non-first fragments and IPv6 extension headers are not accepted.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from dataclasses import dataclass

# opcodes (linux/filter.h)
LD_W_ABS = 0x20
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LD_H_IND = 0x48
LDX_B_MSH = 0xB1
ALU_AND_K = 0x54
JMP_JA = 0x05
JMP_JEQ_K = 0x15
JMP_JSET_K = 0x45
RET_K = 0x06

SO_ATTACH_FILTER = 26
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # ancillary load: the packet type (SKF_AD_OFF + SKF_AD_PKTTYPE)
PACKET_OUTGOING = 4
Insn = tuple[int, int, int, int]  # code, jt, jf, k


@dataclass(frozen=True)
class Match:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = 0  # 0: any port


def _camera_v4(m: Match, nh: int, snaplen: int) -> list[Insn]:
    addr = int(m.address)
    if not m.port:
        return [(LD_W_ABS, 0, 0, nh + 12), (JMP_JEQ_K, 0, 1, addr), (RET_K, 0, 0, snaplen)]
    return [
        (LD_W_ABS, 0, 0, nh + 12), (JMP_JEQ_K, 0, 5, addr),
        (LD_H_IND, 0, 0, nh), (JMP_JEQ_K, 2, 0, m.port),
        (LD_H_IND, 0, 0, nh + 2), (JMP_JEQ_K, 0, 1, m.port),
        (RET_K, 0, 0, snaplen),
    ]


def _camera_v6(m: Match, nh: int, snaplen: int) -> list[Insn]:
    words = struct.unpack("!IIII", m.address.packed)
    tail: list[Insn] = [(RET_K, 0, 0, snaplen)]
    if m.port:
        u = nh + 40
        tail = [(LD_H_ABS, 0, 0, u), (JMP_JEQ_K, 2, 0, m.port), (LD_H_ABS, 0, 0, u + 2),
                (JMP_JEQ_K, 0, 1, m.port), (RET_K, 0, 0, snaplen)]
    out: list[Insn] = []
    n = 8 + len(tail)  # instructions in this block
    for i, w in enumerate(words):
        out.append((LD_W_ABS, 0, 0, nh + 8 + 4 * i))
        here = len(out)  # index after the jump
        out.append((JMP_JEQ_K, 0, n - here - 1, w))
    return out + tail


def program(matches: list[Match], link_header: int = 14, snaplen: int = 512,
            skip_outgoing: bool = False) -> list[Insn]:
    """The filter. ``link_header``: 14 for Ethernet (and Linux loopback), 0 for raw IP interfaces.

    ``skip_outgoing``: drop packets the host sends (on ``lo`` every packet passes twice, sent and received).
    """
    nh = link_header
    v4 = [m for m in matches if m.address.version == 4]
    v6 = [m for m in matches if m.address.version == 6]
    sec4: list[Insn] = [
        (LD_B_ABS, 0, 0, nh + 9), (JMP_JEQ_K, 1, 0, 17), (RET_K, 0, 0, 0),  # UDP
        (LD_H_ABS, 0, 0, nh + 6), (JMP_JSET_K, 0, 1, 0x1FFF), (RET_K, 0, 0, 0),  # not a later fragment
        (LDX_B_MSH, 0, 0, nh),  # X = IPv4 header length: X + nh is the UDP header
    ]
    for m in v4:
        sec4 += _camera_v4(m, nh, snaplen)
    sec4.append((RET_K, 0, 0, 0))
    sec6: list[Insn] = [(LD_B_ABS, 0, 0, nh + 6), (JMP_JEQ_K, 1, 0, 17), (RET_K, 0, 0, 0)]
    for m in v6:
        sec6 += _camera_v6(m, nh, snaplen)
    sec6.append((RET_K, 0, 0, 0))
    head: list[Insn] = []
    if skip_outgoing:
        head += [(LD_B_ABS, 0, 0, SKF_AD_PKTTYPE), (JMP_JEQ_K, 0, 1, PACKET_OUTGOING), (RET_K, 0, 0, 0)]
    if nh:
        head += [(LD_H_ABS, 0, 0, 12)]
        eq4, eq6 = 0x0800, 0x86DD
    else:
        head += [(LD_B_ABS, 0, 0, 0), (ALU_AND_K, 0, 0, 0xF0)]
        eq4, eq6 = 0x40, 0x60
    # head, jeq v4 ? next : +1, ja V4, jeq v6 ? next : +1, ja V6, ret 0, V4..., V6...
    start4 = len(head) + 5
    start6 = start4 + len(sec4)
    i = len(head)
    head += [
        (JMP_JEQ_K, 0, 1, eq4), (JMP_JA, 0, 0, start4 - (i + 2)),
        (JMP_JEQ_K, 0, 1, eq6), (JMP_JA, 0, 0, start6 - (i + 4)),
        (RET_K, 0, 0, 0),
    ]
    prog = head + sec4 + sec6
    if len(prog) > 4096:
        raise ValueError(f"too many cameras for one BPF program ({len(prog)} instructions > 4096)")
    return prog


def attach(sock: socket.socket, prog: list[Insn]) -> None:
    """SO_ATTACH_FILTER: replaces the socket's filter atomically."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def run(prog: list[Insn], pkt: bytes, pkttype: int = 0) -> int:
    """Interpret the program on a packet (the kernel's semantics, for tests): bytes accepted, 0 = dropped."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == LD_B_ABS and k == SKF_AD_PKTTYPE:
            a = pkttype
        elif code in (LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_H_IND):
            off = k + (x if code == LD_H_IND else 0)
            size = {LD_W_ABS: 4, LD_H_ABS: 2, LD_B_ABS: 1, LD_H_IND: 2}[code]
            if off + size > len(pkt):
                return 0
            a = int.from_bytes(pkt[off : off + size], "big")
        elif code == LDX_B_MSH:
            if k >= len(pkt):
                return 0
            x = (pkt[k] & 0x0F) * 4
        elif code == ALU_AND_K:
            a &= k
        elif code == JMP_JA:
            pc += k
        elif code == JMP_JEQ_K:
            pc += jt if a == k else jf
        elif code == JMP_JSET_K:
            pc += jt if a & k else jf
        elif code == RET_K:
            return min(k, len(pkt))
        else:
            raise ValueError(f"unknown BPF opcode {code:#x}")
