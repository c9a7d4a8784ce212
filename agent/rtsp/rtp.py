"""Sans-io RTP receive statistics for one stream (RFC 3550): packets in with their arrival time.

Loss follows RFC 3550 A.1/A.3 (extended highest sequence number minus the first, plus one, minus
packets received), jitter A.8 (in timestamp units, reported in seconds with the clock rate), frames
are packets with the marker bit (the last packet of a video frame for H.264/H.265/JPEG payloads).
"""

from __future__ import annotations

from dataclasses import dataclass

RTP_HEADER = 12


@dataclass(frozen=True)
class RtpHeader:
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload_len: int


def parse_rtp(data: bytes) -> RtpHeader | None:
    """The header of one RTP packet, or None if it is not RTP version 2 or is truncated."""
    if len(data) < RTP_HEADER or data[0] >> 6 != 2:
        return None
    cc = data[0] & 0x0F
    off = RTP_HEADER + 4 * cc
    if data[0] & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(data[off + 2:off + 4], "big")
    end = len(data)
    if data[0] & 0x20:  # padding: the last byte says how much
        end -= data[-1]
    if off > end:
        return None
    return RtpHeader(
        payload_type=data[1] & 0x7F,
        marker=bool(data[1] & 0x80),
        seq=int.from_bytes(data[2:4], "big"),
        timestamp=int.from_bytes(data[4:8], "big"),
        ssrc=int.from_bytes(data[8:12], "big"),
        payload_len=end - off,
    )


class RtpStats:
    """Running totals for one RTP stream. ``add(packet, now)``; ``now`` in seconds (any epoch)."""

    def __init__(self, clock_rate: int, payload_type: int | None = None):
        self.clock_rate = clock_rate
        self.payload_type = payload_type  # when set, packets of other payload types are ignored
        self.packets = 0
        self.bytes = 0
        self.frames = 0
        self.invalid = 0
        self.ssrc: int | None = None
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.first_frame_time: float | None = None
        self.last_frame_time: float | None = None
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._transit: float | None = None
        self.jitter_units = 0.0  # RFC 3550 A.8 running jitter, timestamp units

    def add(self, data: bytes, now: float) -> RtpHeader | None:
        h = parse_rtp(data)
        if h is None or (self.payload_type is not None and h.payload_type != self.payload_type):
            self.invalid += 1
            return None
        if self.ssrc is None:
            self.ssrc = h.ssrc
            self._base_seq = self._max_seq = h.seq
            self.first_time = now
        elif h.ssrc != self.ssrc:  # another source on the channel: not ours to count
            self.invalid += 1
            return None
        else:
            delta = (h.seq - self._max_seq) & 0xFFFF
            if 0 < delta < 0x8000:  # in order, maybe with a gap
                if h.seq < self._max_seq:
                    self._cycles += 0x10000
                self._max_seq = h.seq
        self.packets += 1
        self.bytes += len(data)
        self.last_time = now
        if self.clock_rate > 0:
            transit = now * self.clock_rate - h.timestamp
            if self._transit is not None:
                d = abs(transit - self._transit)
                self.jitter_units += (d - self.jitter_units) / 16.0
            self._transit = transit
        if h.marker:
            self.frames += 1
            if self.first_frame_time is None:
                self.first_frame_time = now
            self.last_frame_time = now
        return h

    @property
    def expected(self) -> int:
        if self.ssrc is None:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def lost(self) -> int:
        """RFC 3550 cumulative loss; negative when duplicates outnumber losses. Clamp for counters."""
        return self.expected - self.packets

    @property
    def jitter_seconds(self) -> float:
        return self.jitter_units / self.clock_rate if self.clock_rate > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        """Frames over the arrival time between the first and the last frame end."""
        if self.frames < 2 or self.first_frame_time is None or self.last_frame_time is None:
            return 0.0
        span = self.last_frame_time - self.first_frame_time
        return (self.frames - 1) / span if span > 0 else 0.0

    def bits_per_second(self, until: float | None = None) -> float:
        """RTP bytes (headers included) over the time from the first packet to ``until`` (or the last)."""
        if self.first_time is None:
            return 0.0
        end = until if until is not None else self.last_time
        span = (end or self.first_time) - self.first_time
        return self.bytes * 8 / span if span > 0 else 0.0
