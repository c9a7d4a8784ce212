"""RTP stream analysis: per stream (5-tuple + SSRC) running totals, sans-io.

Feed it capture records (``Analyzer.feed``: a pcap/pcapng buffer and offsets) and
read ``Analyzer.reported()``. The same code serves ``mogli-agent analyze-pcap``
and the live capture (agent/rtp/live.py), so the two agree by construction.

Definitions (issue 4; RFC 3550 appendix A):
- ``packets``: RTP packets received, duplicates included; ``bytes``: the RTP
  packets' size (header, CSRCs, extension, payload and padding: the UDP payload).
- sequence numbers are extended with a cycle count as in RFC 3550 A.1
  (MAX_DROPOUT 3000, MAX_MISORDER 100). A jump outside that window is believed
  only when the next packet follows it; a believed forward jump is counted as
  loss (an outage), a believed backward jump starts a new numbering segment.
- ``expected`` = extended highest sequence number - first sequence number + 1,
  summed over segments; ``lost`` = expected - packets (negative when duplicates
  outnumber losses); ``duplicates``: packets whose extended sequence number was
  already seen (within the last 128); ``reordered``: packets older than the
  highest seen that were not duplicates.
- jitter: RFC 3550 A.8 over all packets in arrival order:
  D = (R_j - R_i) * rate - (S_j - S_i) (RTP timestamp difference taken modulo
  2^32 as a signed value), J += (|D| - J) / 16. Needs the clock rate: static
  payload types from RFC 3551, dynamic ones (96-127) only from the caller
  (``--clock-rate``); otherwise jitter is unknown (None).
- a flow is reported once it is clearly RTP: version 2, not RTCP (second byte
  200-204), a consistent header, and 3 packets of one SSRC, each within 100
  sequence numbers after the previous highest. Statistics count from the first
  packet. A new SSRC on the same 5-tuple is a new stream.

Speed: the whole per-packet path is one loop in ``Analyzer.feed`` with locals,
struct.unpack_from on the capture buffer and __slots__ state. CPython's time goes
into dispatching bytecode operations and allocating objects, so the common case
is written for few of both: a pcap record or pcapng Enhanced Packet Block header
is one unpack, and Ethernet + IPv4 without options + UDP + the RTP fixed header
(flow key included) another; one dict lookup finds the stream; a packet of a
known stream that is in order, RTP version 2 without extras, takes one test each
for its sequence number and its gap. Everything else (other encapsulations, RTP
header extras, loss, reordering, wrap, new streams) branches off that path.
About 170 bytecode operations per packet without a clock rate, 220 with
(jitter); ``python -m bench.rtp`` measured 0.5-0.9M packets per CPU second for
the whole process (start-up included) on a shared 2-core machine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from agent.rtp.decode import DAMAGED, flow_endpoints, locate_udp
from agent.rtp.pcapfile import (
    MAX_RECORD,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_OPB,
    PCAPNG_SHB,
    PCAPNG_SPB,
    Buffer,
    CaptureError,
    CaptureInfo,
    Interface,
    read_interface,
    read_section_header,
)

# RFC 3551 static payload types -> RTP clock rate (Hz)
STATIC_CLOCK_RATES: dict[int, int] = {
    0: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000, 9: 8000, 10: 44100, 11: 44100,
    12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025, 17: 22050, 18: 8000, 25: 90000, 26: 90000,
    28: 90000, 31: 90000, 32: 90000, 33: 90000, 34: 90000,
}
STATIC_NAMES: dict[int, str] = {
    0: "PCMU", 3: "GSM", 4: "G723", 5: "DVI4", 6: "DVI4", 7: "LPC", 8: "PCMA", 9: "G722", 10: "L16",
    11: "L16", 12: "QCELP", 13: "CN", 14: "MPA", 15: "G728", 16: "DVI4", 17: "DVI4", 18: "G729",
    25: "CelB", 26: "JPEG", 28: "nv", 31: "H261", 32: "MPV", 33: "MP2T", 34: "H263",
}

MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 3  # packets of one SSRC before a flow counts as RTP
PROBATION_GAP = 100  # ... each at most this far after the previous highest sequence number
SEEN_WINDOW = 128  # late packets are told from duplicates this far back (> MAX_MISORDER)
MAX_CANDIDATES = 100_000  # unconfirmed (not yet RTP) streams kept before they are pruned

# Ethernet + IPv4 (no options) + UDP + RTP fixed header in one unpack, with as few fields as will do:
# ethertype+version/IHL+TOS (as one int), flags/fragment offset+TTL+protocol (one int), the flow key (source
# and destination address and port, as decode.locate_udp makes it), UDP length, RTP byte 0, byte 1, sequence
# number, timestamp, SSRC
_FAST = struct.Struct("!12xI4xI2x12sH2xBBHII")
# RTP byte 1 -> it is RTCP (SR/RR/SDES/BYE/APP: payload type field 72-76, marker bit either way)
_RTCP_B1 = tuple(72 <= b & 0x7F <= 76 for b in range(256))
_RTP = struct.Struct("!BBHII")
# struct tpacket3_hdr (native order): tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac
_TPACKET3 = struct.Struct("=IIIIIIH")
_H = struct.Struct("!H")

JSON_FIELDS = (
    "src", "src_port", "dst", "dst_port", "ssrc", "payload_type", "packets", "bytes", "expected", "lost",
    "duplicates", "jitter_ms", "mean_jitter_ms", "max_jitter_ms", "max_delta_ms", "frames", "stalls",
    "first_time", "last_time",
)


def _record_unpackers(endian: str) -> tuple[Callable[..., tuple[Any, ...]], ...]:
    """unpack_from of a pcap record header (without the original length), a pcapng block header, an EPB from
    its block header on (without the original length) and an obsolete packet block after its block header."""
    return tuple(struct.Struct(endian + f).unpack_from for f in ("III4x", "II", "IIIIII4x", "HHIIII"))


class Stream:
    """Running totals of one RTP stream. Public fields are read by the CLI and the live probe."""

    __slots__ = (
        "bad_seq", "base", "bytes", "cycles", "dups", "epoch", "expected_prior", "first_t", "frames", "good", "jitter",
        "jmax", "jsum", "key", "last_frame_t", "last_t", "last_ts", "max_delta", "max_seq", "missing", "ok",
        "packets", "pt", "quiet", "rate", "reordered", "ssrc", "stalls",
    )

    def __init__(self, key: bytes, ssrc: int, pt: int, rate: float, t: float, seq: int, ts: int, size: int,
                 marker: bool, epoch: int = 0):
        self.key = key
        self.epoch = epoch  # times (first_t, last_t, ...) are seconds after this Unix time, for float precision
        self.ssrc = ssrc
        self.pt = pt
        self.rate = rate  # RTP clock rate in Hz; 0: unknown, no jitter
        self.ok = False  # confirmed RTP (see MIN_SEQUENTIAL)
        self.good = 1
        self.packets = 1
        self.bytes = size
        self.frames = 1 if marker else 0
        self.first_t = t
        self.last_t = t
        self.last_frame_t = t if marker else 0.0
        self.last_ts = ts
        self.base = seq
        self.max_seq = seq
        self.cycles = 0
        self.expected_prior = 0
        self.bad_seq = -1
        self.missing: set[int] = set()  # extended sequence numbers skipped within the last SEEN_WINDOW
        self.dups = 0
        self.reordered = 0
        self.jitter = 0.0  # in RTP timestamp units
        self.jsum = 0.0
        self.jmax = 0.0
        self.max_delta = 0.0
        self.stalls = 0
        self.quiet = float("-inf")  # the analyser's: gaps up to min(max_delta, stall gap) change neither

    @property
    def expected(self) -> int:
        return int(self.expected_prior + self.cycles + self.max_seq - self.base + 1)

    @property
    def lost(self) -> int:
        return self.expected - self.packets

    def jitter_seconds(self) -> float | None:
        return self.jitter / self.rate if self.rate else None

    def summary(self) -> dict[str, Any]:
        """The issue-4 ``--json`` object: exactly JSON_FIELDS, in that order."""
        src, sport, dst, dport = flow_endpoints(self.key)
        ms = 1000.0 / self.rate if self.rate else 0.0
        n = self.packets - 1

        def r(v: float) -> float:  # to the nanosecond: drops float noise such as 80.00000000000001
            return round(v, 6)

        return {
            "src": src, "src_port": sport, "dst": dst, "dst_port": dport, "ssrc": self.ssrc,
            "payload_type": self.pt, "packets": self.packets, "bytes": self.bytes, "expected": self.expected,
            "lost": self.lost, "duplicates": self.dups,
            "jitter_ms": r(self.jitter * ms) if self.rate else None,
            "mean_jitter_ms": r(self.jsum / n * ms if n else 0.0) if self.rate else None,
            "max_jitter_ms": r(self.jmax * ms) if self.rate else None,
            "max_delta_ms": r(self.max_delta * 1000.0), "frames": self.frames, "stalls": self.stalls,
            "first_time": round(self.epoch + self.first_t, 9), "last_time": round(self.epoch + self.last_t, 9),
        }

    def advance(self, seq: int, ud: int) -> None:
        """In order with a gap of ud - 1 sequence numbers (lost, or late and still to come)."""
        ext = self.cycles + self.max_seq
        missing = self.missing
        missing.update(range(max(ext + 1, ext + ud - SEEN_WINDOW), ext + ud))
        if len(missing) > 4 * SEEN_WINDOW:
            self.missing = {e for e in missing if e >= ext + ud - SEEN_WINDOW}
        if seq < self.max_seq:
            self.cycles += 65536
        self.max_seq = seq

    def late(self, back: int) -> None:
        """A packet ``back`` sequence numbers behind the highest: late (reordered), or a duplicate."""
        ext = self.cycles + self.max_seq - back
        if ext in self.missing:
            self.missing.discard(ext)
            self.reordered += 1
        elif ext < self.base:  # older than the first packet we saw: late, not seen before
            self.reordered += 1
        else:
            self.dups += 1

    def jump(self, seq: int) -> None:
        """A sequence number outside the A.1 window: believe it only when the next packet follows it."""
        if seq != self.bad_seq:
            self.bad_seq = (seq + 1) & 0xFFFF
            return
        prev = (seq - 1) & 0xFFFF  # the packet that jumped
        fwd = (prev - self.max_seq) & 0xFFFF
        if fwd < 0x8000:  # forward: packets were lost (an outage); keep one numbering
            ext = self.cycles + self.max_seq + fwd + 1
            self.missing = set(range(max(ext - fwd, ext - 1 - SEEN_WINDOW), ext - 1))
            self.cycles = ext - seq
        else:  # backward: the sender restarted its numbering; a new segment
            self.expected_prior += self.cycles + self.max_seq - self.base + 1
            self.cycles = 0 if seq else 65536
            self.base = self.cycles + seq - 1
            self.missing = set()
        self.max_seq = seq
        self.bad_seq = -1


def _rtp_header_ok(buf: Buffer, rtp: int, rlen: int, pend: int, b0: int) -> bool:
    """CSRC list, extension and padding fit in the packet (checked where captured)."""
    hdr = 12 + 4 * (b0 & 0x0F)
    if hdr > rlen:
        return False
    if b0 & 0x10:
        if rtp + hdr + 4 > pend:
            return hdr + 4 <= rlen  # extension header not captured (snap length): trust the UDP length
        hdr += 4 + 4 * _H.unpack_from(buf, rtp + hdr + 2)[0]
        if hdr > rlen:
            return False
    if b0 & 0x20 and rtp + rlen <= pend:
        pad = buf[rtp + rlen - 1]
        if pad == 0 or hdr + pad > rlen:
            return False
    return True


class Analyzer:
    """All streams of one capture (or one live socket).

    ``clock_rate``: RTP clock rate for dynamic payload types (96-127); ``rate_for``
    overrides the choice per flow (live capture: per camera).
    """

    def __init__(self, clock_rate: float = 0.0, stall_gap: float = 1.0,
                 rate_for: Callable[[bytes, int], float] | None = None):
        self.clock_rate = clock_rate
        self.stall_gap = stall_gap
        self.rate_for = rate_for or self.default_rate
        self.flows: dict[bytes, Stream] = {}  # flow key -> the stream of its latest SSRC
        self.streams: dict[tuple[bytes, int], Stream] = {}
        self.records = 0  # packets read from the capture
        self.udp = 0  # ... of which UDP with room for an RTP header
        self.rtp = 0  # ... of which look like RTP (version 2, not RTCP, consistent header)
        self.damaged = 0  # packets or blocks skipped because they are cut short or inconsistent
        self.problem = ""  # why reading stopped early, with the byte offset
        self.epoch: int | None = None  # packet times are kept relative to this Unix second (float precision)
        self.last_time = 0.0  # of the last packet, relative to epoch
        self._nostream = Stream(b"", -1, 0, 0.0, 0.0, 0, 0, 0, False)  # feed's: what flows has for an unknown key

    def default_rate(self, key: bytes, pt: int) -> float:
        if pt in STATIC_CLOCK_RATES:
            return float(STATIC_CLOCK_RATES[pt])
        return self.clock_rate if pt >= 96 else 0.0

    def reported(self) -> list[Stream]:
        """Streams that are clearly RTP, in order of their first packet."""
        return sorted((s for s in self.streams.values() if s.ok), key=lambda s: (s.first_t, s.key, s.ssrc))

    def _other(self, key: bytes, ssrc: int, pt: int, t: float, seq: int, ts: int, size: int,
               b1: int) -> Stream | None:
        """The stream of a packet that is not from a confirmed flow's latest SSRC.

        Returns the stream for the caller to update, or None when the packet started a new (unconfirmed)
        stream. A stream is confirmed after MIN_SEQUENTIAL packets, each at most PROBATION_GAP ahead;
        only confirmed streams enter ``flows``, so the hot loop never checks probation.
        """
        st = self.streams.get((key, ssrc))
        if st is None:
            if len(self.streams) >= MAX_CANDIDATES:
                self._prune()
            self.streams[(key, ssrc)] = Stream(key, ssrc, pt, self.rate_for(key, pt), t, seq, ts, size,
                                               bool(b1 & 0x80), self.epoch or 0)
            return None
        if not st.ok:
            if 0 < (seq - st.max_seq) & 0xFFFF <= PROBATION_GAP:
                st.good += 1
                if st.good >= MIN_SEQUENTIAL:
                    st.ok = True
                    self.flows[key] = st
        else:
            self.flows[key] = st
        return st

    def _prune(self) -> None:
        """Forget flows that never became RTP (random UDP), so memory stays bounded."""
        self.streams = {k: s for k, s in self.streams.items() if s.ok}
        self.flows = {k: s for k, s in self.flows.items() if s.ok}

    def _interface_base(self, ifc: Interface, ticks: int) -> None:
        """Relative times for a pcapng interface: its first timestamp in ticks, and where that lies after epoch."""
        if self.epoch is None:
            self.epoch = int(ticks * ifc.resolution + ifc.tsoffset)
        ifc.base = ticks
        ifc.shift = ticks * ifc.resolution + ifc.tsoffset - self.epoch

    def feed(self, buf: Buffer, off: int, end: int, info: CaptureInfo) -> int:
        """Analyse the records in ``buf[off:end]``; return the offset after the last whole record.

        ``buf`` must slice to ``bytes`` (bytes or mmap). Damaged packets are counted
        and skipped; a damaged record framing stops reading and sets ``problem``.
        ``info.kind`` "tpacket3": ``buf[off:end]`` is one block of a Linux TPACKET_V3
        receive ring (agent/rtp/live.py), packets chained by ``tp_next_offset``.
        """
        mode = 1 if info.kind == "pcapng" else 2 if info.kind == "tpacket3" else 0
        endian = info.endian
        rec_u, blk_u, epb_u, opb_u = _record_unpackers(endian)
        tp_u = _TPACKET3.unpack_from
        fast_u = _FAST.unpack_from
        rtp_u = _RTP.unpack_from
        h_u = _H.unpack_from
        locate = locate_udp
        header_ok = _rtp_header_ok
        rtcp = _RTCP_B1
        ifaces = info.interfaces
        lt = info.linktype
        res = info.resolution
        flows_get = self.flows.get
        nostream = self._nostream
        stall_gap = self.stall_gap
        # records counts every packet; the UDP and RTP counts are worked out at the end from the packets that
        # fell short of each (fewer additions in the common case)
        records = not_udp = not_rtp = damaged = 0
        t = self.last_time
        epoch = self.epoch
        if epoch is None and mode != 1 and off + 16 <= end:
            epoch = self.epoch = rec_u(buf, off)[0] if mode == 0 else tp_u(buf, off)[1]
        last = end - 16  # pcap: the last offset where a record header fits
        while True:
            # ---- framing: one packet at buf[p:pend] (caplen bytes), captured at t, link type lt
            if mode == 0:
                if off > last:
                    if off < end:
                        self.problem = f"capture truncated: record header cut short at byte offset {off}"
                    break
                sec, frac, caplen = rec_u(buf, off)
                p = off + 16
                pend = p + caplen
                if pend > end or caplen > MAX_RECORD:
                    self.problem = (f"record length {caplen} is invalid at byte offset {off}" if caplen > MAX_RECORD
                                    else f"capture truncated: packet record cut short at byte offset {off}")
                    break
                off = pend
                t = (sec - epoch) + frac * res
            elif mode == 2:
                if off + 32 > end:
                    break
                nxt, sec, frac, caplen, _, _, mac = tp_u(buf, off)
                p = off + mac
                pend = p + caplen
                if pend > end:
                    self.problem = f"ring packet cut short at byte offset {off}"
                    break
                off = off + nxt if nxt else end
                t = (sec - epoch) + frac * 1e-9
            else:
                if off + 28 <= end:  # an Enhanced Packet Block's fields come with its block header (one unpack)
                    btype, blen, ifid, hi, lo, caplen = epb_u(buf, off)
                elif off + 12 <= end:
                    btype, blen = blk_u(buf, off)
                else:
                    if off < end:
                        self.problem = f"capture truncated: block header cut short at byte offset {off}"
                    break
                if btype == PCAPNG_SHB:
                    try:
                        off = read_section_header(buf, off, end, info)
                    except CaptureError as e:
                        self.problem = str(e)
                        break
                    if info.endian != endian:
                        endian = info.endian
                        rec_u, blk_u, epb_u, opb_u = _record_unpackers(endian)
                    ifaces = info.interfaces
                    continue
                if blen < 12 or blen & 3 or blen > MAX_RECORD + 64:
                    self.problem = f"block length {blen} is invalid at byte offset {off + 4}"
                    break
                nxt = off + blen
                if nxt > end:
                    self.problem = f"capture truncated: block cut short at byte offset {off}"
                    break
                if btype == PCAPNG_EPB:  # read above: 32 bytes and more fit before end
                    if blen < 32:
                        damaged += 1
                        off = nxt
                        continue
                    p = off + 28
                elif btype == PCAPNG_SPB:
                    if blen < 16:
                        damaged += 1
                        off = nxt
                        continue
                    ifid, hi, lo = 0, -1, 0
                    caplen = min(blk_u(buf, off + 8)[0], blen - 16)
                    p = off + 12
                elif btype == PCAPNG_OPB:
                    if blen < 32:
                        damaged += 1
                        off = nxt
                        continue
                    ifid, _, hi, lo, caplen, _ = opb_u(buf, off + 8)
                    p = off + 28
                else:
                    if btype == PCAPNG_IDB:
                        try:
                            ifaces.append(read_interface(buf, off, blen, endian))
                        except CaptureError as e:
                            self.problem = str(e)
                            break
                    off = nxt
                    continue
                off = nxt
                pend = p + caplen
                if pend > nxt - 4:
                    damaged += 1
                    continue
                try:
                    ifc = ifaces[ifid]
                except IndexError:  # no such interface (described)
                    damaged += 1
                    continue
                lt = ifc.linktype
                if hi >= 0:  # a Simple Packet Block has no timestamp: keep the previous packet's
                    if ifc.base < 0:
                        self._interface_base(ifc, (hi << 32) | lo)
                    t = (((hi << 32) | lo) - ifc.base) * ifc.resolution + ifc.shift
            records += 1
            # ---- link, IP, UDP: the common case in one unpack
            if lt == 1 and caplen >= 54:  # _FAST.size
                eip, fpr, key, ulen, b0, b1, seq, ts, ssrc = fast_u(buf, p)
                # IPv4 without options (any TOS); not a later fragment (offset 0, any flags), UDP (any TTL)
                if eip & 0xFFFFFF00 != 0x08004500 or fpr & 0x1FFF00FF != 17:
                    key = b""
                rtp = p + 42
            else:
                key = b""
            if not key:
                status, key, u = locate(buf, p, pend, lt)
                if status:
                    not_udp += 1
                    if status == DAMAGED:
                        damaged += 1
                    continue
                rtp = u + 8
                if pend - rtp < 12:
                    not_udp += 1
                    continue
                ulen = h_u(buf, u + 4)[0]
                b0, b1, seq, ts, ssrc = rtp_u(buf, rtp)
            # ---- RTP? (b0 0x80: version 2 without padding, extension or CSRCs, nothing more to check)
            rlen = ulen - 8
            if b0 != 0x80 and (b0 & 0xC0 != 0x80 or not header_ok(buf, rtp, rlen, pend, b0)):
                not_rtp += 1
                continue
            if rlen < 12 or rtcp[b1]:
                not_rtp += 1
                continue
            st = flows_get(key, nostream)  # nostream: an SSRC that matches none
            if st.ssrc != ssrc:
                other = self._other(key, ssrc, b1 & 0x7F, t, seq, ts, rlen, b1)
                flows_get = self.flows.get  # _other may have pruned (rebuilt) the dicts
                if other is None:
                    continue
                st = other
            # ---- running totals (RFC 3550 A.1 sequence, A.8 jitter)
            st.packets += 1
            st.bytes += rlen
            if b1 & 0x80:
                st.frames += 1
                st.last_frame_t = t
            if seq - st.max_seq == 1:  # in order: the common case (a wrap from 65535 to 0 takes the next)
                st.max_seq = seq
            else:
                ud = (seq - st.max_seq) & 0xFFFF
                if ud == 1:
                    st.max_seq = seq
                    st.cycles += 65536
                elif ud == 0:
                    st.dups += 1
                elif ud < 3000:  # MAX_DROPOUT
                    st.advance(seq, ud)
                elif ud > 65436:  # 65536 - MAX_MISORDER
                    st.late(65536 - ud)
                else:
                    st.jump(seq)
            dt = t - st.last_t
            st.last_t = t
            if dt > st.quiet:  # a new longest gap, or a stall (one test instead of two in the common case)
                if dt > st.max_delta:
                    st.max_delta = dt
                if dt > stall_gap:
                    st.stalls += 1
                st.quiet = min(st.max_delta, stall_gap)
            if st.rate:
                rate = st.rate
                dts = (ts - st.last_ts) & 0xFFFFFFFF
                st.last_ts = ts
                if dts & 0x80000000:
                    dts -= 0x100000000
                d = dt * rate - dts
                if d < 0:
                    d = -d
                j = st.jitter
                j += (d - j) * 0.0625
                st.jitter = j
                st.jsum += j
                if j > st.jmax:
                    st.jmax = j
        self.records += records
        self.udp += records - not_udp
        self.rtp += records - not_udp - not_rtp
        self.damaged += damaged
        self.last_time = t
        return off
