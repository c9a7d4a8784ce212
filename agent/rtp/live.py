"""Live passive RTP analysis: an AF_PACKET socket with a kernel BPF filter feeding the analyser.

One ``LiveCapture`` per interface serves every camera configured on it: the
kernel filter (agent/rtp/bpf.py) passes only UDP from the cameras, the asyncio
loop waits for the socket with ``loop.add_reader`` and hands batches of packets
to the same ``Analyzer`` that ``analyze-pcap`` uses, with the kernel's receive
timestamps, so live numbers and a capture of the same traffic agree.
``PACKET_STATISTICS`` gives the kernel's drop count.

Packets arrive through a TPACKET_V3 receive ring shared with the kernel (mmap):
the kernel fills blocks and wakes us once per full block or every
RING_TIMEOUT_MS, and the analyser reads each block in place, with no system
call or copy per packet. Where the ring cannot be set up, the fallback reads
packets one by one with recvmsg (SO_TIMESTAMPNS), in batches.

Streams belong to a camera when their source address is the camera's and, if a
port is configured, their source or destination port is that port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import mmap
import socket
import struct
import time
import weakref
from dataclasses import dataclass, field

from agent.rtp import bpf
from agent.rtp.analyzer import STATIC_CLOCK_RATES, Analyzer, Stream
from agent.rtp.decode import LINKTYPE_ETHERNET, LINKTYPE_RAW
from agent.rtp.pcapfile import CaptureInfo

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
SNAPLEN = 512
_REC = struct.Struct("<IIII")
_TS = struct.Struct("@qq")
PACKET_VERSION = 10
PACKET_RX_RING = 5
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
RING_BLOCK = 1 << 18  # bytes per ring block
RING_BLOCKS = 8  # 2 MiB in all: over 3000 packets of SNAPLEN bytes
RING_TIMEOUT_MS = 20  # hand over a block at least this often
_BLOCK_HDR = struct.Struct("=IIII")  # block_status, num_pkts, offset_to_first_pkt, blk_len (at offset 8)
COALESCE = 0.005  # after a read, wait this long before listening again: fewer wakeups, batches of packets
IDLE_FORGET = 600.0  # streams silent this long are folded into their camera's retired totals


@dataclass(frozen=True)
class Camera:
    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = 0  # 0: any
    clock_rate: float = 90000.0  # for dynamic payload types

    def owns(self, src: bytes, sport: int, dport: int) -> bool:
        return src == self.address.packed and (not self.port or self.port in (sport, dport))


@dataclass
class CameraTotals:
    """Cumulative values of one camera, summed over its streams (including forgotten ones)."""

    packets: int = 0
    bytes: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    frames: int = 0
    stalls: int = 0
    jitter: float | None = None  # seconds, of the camera's most recently active stream
    last_packet: float | None = None  # Unix time
    last_frame: float | None = None


_COUNTED = ("packets", "bytes", "lost", "duplicates", "reordered", "frames", "stalls")


def stream_lost(s: Stream) -> int:
    """Sequence numbers never received: expected - (packets - duplicates). Never below 0."""
    return max(0, s.expected - s.packets + s.dups)


@dataclass
class _Retired:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTED, 0))


class LiveCapture:
    """Capture on one interface for a set of cameras. Call ``open`` inside the running loop."""

    def __init__(self, interface: str, stall_gap: float = 1.0, use_ring: bool = True):
        self.interface = interface
        self.use_ring = use_ring
        self.cameras: dict[str, Camera] = {}
        self.analyzer = Analyzer(stall_gap=stall_gap, rate_for=self._rate_for)
        self.sock: socket.socket | None = None
        self.info = CaptureInfo("pcap", 0, "<", linktype=LINKTYPE_ETHERNET, resolution=1e-9)
        self.loopback = False
        self.started = time.time()
        self.kernel_drops = 0
        self.kernel_packets = 0
        self.drops_reported = 0  # the probe's: kernel drops already reported
        self.reported: dict[str, Reported] = {}  # the probe's: per camera, what it reported last
        self._owner: dict[tuple[bytes, int], str | None] = {}
        self._retired: dict[str, _Retired] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rearm: asyncio.TimerHandle | None = None
        self.ring: mmap.mmap | None = None
        self.ring_blocks = RING_BLOCKS
        self._block = 0
        self.ring_info = CaptureInfo("tpacket3", 0, "=", linktype=LINKTYPE_ETHERNET)

    # -- camera mapping ------------------------------------------------------------------------------
    def _camera_of(self, key: bytes) -> Camera | None:
        alen = (len(key) - 4) // 2
        sport, dport = struct.unpack_from("!HH", key, 2 * alen)
        src = key[:alen]
        for cam in self.cameras.values():
            if cam.owns(src, sport, dport):
                return cam
        return None

    def _rate_for(self, key: bytes, pt: int) -> float:
        if pt in STATIC_CLOCK_RATES:
            return float(STATIC_CLOCK_RATES[pt])
        cam = self._camera_of(key)
        return cam.clock_rate if cam is not None and pt >= 96 else 0.0

    def add_camera(self, cam: Camera) -> None:
        if self.cameras.get(cam.name) == cam:
            return
        self.cameras[cam.name] = cam
        self._owner.clear()
        if self.sock is not None:
            self._attach()

    # -- socket --------------------------------------------------------------------------------------
    def _attach(self) -> None:
        assert self.sock is not None
        matches = [bpf.Match(c.address, c.port) for c in self.cameras.values()]
        link = 14 if self.info.linktype == LINKTYPE_ETHERNET else 0
        bpf.attach(self.sock, bpf.program(matches, link, SNAPLEN, skip_outgoing=self.loopback))

    def open(self) -> None:
        """Open the packet socket (needs CAP_NET_RAW) and start reading in the running loop."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            # drop everything until bound and filtered, then empty what slipped in before the filter
            bpf.attach(sock, [(bpf.RET_K, 0, 0, 0)])
            sock.bind((self.interface, ETH_P_ALL))
            hatype = sock.getsockname()[3]
            if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
                self.info.linktype = LINKTYPE_ETHERNET
            else:
                self.info.linktype = LINKTYPE_RAW
            self.loopback = hatype == ARPHRD_LOOPBACK
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:  # room for the packets of a COALESCE pause even at high rates; FORCE needs CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # capped at net.core.rmem_max
            sock.setblocking(False)
            while True:
                try:
                    sock.recv(1)
                except BlockingIOError:
                    break
            self.sock = sock
            if self.use_ring:
                self._setup_ring(sock)
            self._attach()
            sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reset the kernel's counters
        except BaseException:
            sock.close()
            self.sock = None
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.started = time.time()

    def _setup_ring(self, sock: socket.socket, blocks: int = RING_BLOCKS) -> None:
        """A TPACKET_V3 receive ring; on failure (old kernel, no memory) stay with recvmsg."""
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame = 2048
            req = struct.pack("=IIIIIII", RING_BLOCK, blocks, frame, RING_BLOCK * blocks // frame,
                              RING_TIMEOUT_MS, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.ring = mmap.mmap(sock.fileno(), RING_BLOCK * blocks, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.ring = None
            return
        self.ring_blocks = blocks
        self.ring_info.linktype = self.info.linktype

    def _read_ring(self) -> None:
        """Analyse every block the kernel has handed over, in place, and give each back."""
        ring = self.ring
        assert ring is not None
        i = self._block
        feed = self.analyzer.feed
        info = self.ring_info
        for _ in range(self.ring_blocks):
            base = i * RING_BLOCK
            status, num, first, used = _BLOCK_HDR.unpack_from(ring, base + 8)
            if not status & TP_STATUS_USER:
                break
            if num:
                feed(ring, base + first, base + used, info)
            _BLOCK_HDR.pack_into(ring, base + 8, TP_STATUS_KERNEL, 0, 0, 0)
            i = (i + 1) % self.ring_blocks
        self._block = i

    def _readable(self) -> None:
        if self.ring is not None:
            self._read_ring()
            return
        self._read_coalesced()

    def _read_coalesced(self) -> None:
        """Read everything waiting, then stop listening for COALESCE seconds so packets arrive in batches
        (the kernel timestamps each packet, so the pause does not change any measurement)."""
        self.read_ready()
        if self.sock is not None and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._rearm = self._loop.call_later(COALESCE, self._listen)

    def _listen(self) -> None:
        self._rearm = None
        if self.sock is not None and self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        if self.sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def read_ready(self, budget: int = 4096) -> None:
        """Analyse what the kernel has for us (recvmsg: up to ``budget`` packets, in one batch)."""
        sock = self.sock
        if sock is None:
            return
        if self.ring is not None:
            self._read_ring()
            return
        parts: list[bytes] = []
        recvmsg = sock.recvmsg
        loopback = self.loopback
        for _ in range(budget):
            try:
                data, anc, _flags, addr = recvmsg(SNAPLEN, 64)
            except BlockingIOError:
                break
            if loopback and addr[2] == PACKET_OUTGOING:
                continue  # on lo every packet passes twice; keep the received copy, as libpcap does
            sec = nsec = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TS.unpack_from(value)
            if not sec:
                now = time.time_ns()
                sec, nsec = divmod(now, 1_000_000_000)
            n = len(data)
            parts.append(_REC.pack(sec, nsec, n, n))
            parts.append(data)
        if parts:
            buf = b"".join(parts)
            self.analyzer.feed(buf, 0, len(buf), self.info)

    def poll_kernel_stats(self) -> None:
        """Add the kernel's counters since the last call (reading them resets them)."""
        if self.sock is not None:
            packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.kernel_packets += packets
            self.kernel_drops += drops

    # -- per camera ----------------------------------------------------------------------------------
    def owner(self, s: Stream) -> str | None:
        k = (s.key, s.ssrc)
        if k not in self._owner:
            cam = self._camera_of(s.key)
            self._owner[k] = cam.name if cam else None
        return self._owner[k]

    def totals(self, now: float | None = None) -> dict[str, CameraTotals]:
        """Cumulative totals per configured camera; forgets streams idle for IDLE_FORGET seconds."""
        now = time.time() if now is None else now
        out = {name: CameraTotals(**self._retired.get(name, _Retired()).values) for name in self.cameras}
        latest: dict[str, float] = {}
        forget: list[tuple[bytes, int]] = []
        for k, s in self.analyzer.streams.items():
            if not s.ok:
                continue
            name = self.owner(s)
            if name is None or name not in out:
                continue
            t = out[name]
            vals = {"packets": s.packets, "bytes": s.bytes, "lost": stream_lost(s), "duplicates": s.dups,
                    "reordered": s.reordered, "frames": s.frames, "stalls": s.stalls}
            for f, v in vals.items():
                setattr(t, f, getattr(t, f) + v)
            last = s.epoch + s.last_t
            if t.last_packet is None or last > t.last_packet:
                t.last_packet = last
            if s.last_frame_t and (t.last_frame is None or s.epoch + s.last_frame_t > t.last_frame):
                t.last_frame = s.epoch + s.last_frame_t
            if s.rate and last > latest.get(name, -1.0):
                latest[name] = last
                t.jitter = s.jitter / s.rate
            if now - last > IDLE_FORGET:
                forget.append(k)
                r = self._retired.setdefault(name, _Retired())
                for f, v in vals.items():
                    r.values[f] += v
        for k in forget:
            del self.analyzer.streams[k]
            if self.analyzer.flows.get(k[0]) is not None and self.analyzer.flows[k[0]].ssrc == k[1]:
                del self.analyzer.flows[k[0]]
        return out


# One capture per interface per event loop, created by the first probe run that needs it.
_CAPTURES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, LiveCapture]] = (
    weakref.WeakKeyDictionary()
)


def capture_for(interface: str) -> LiveCapture:
    loop = asyncio.get_running_loop()
    caps = _CAPTURES.setdefault(loop, {})
    cap = caps.get(interface)
    if cap is None:
        cap = LiveCapture(interface)
        cap.open()
        caps[interface] = cap
    return cap


def close_all() -> None:
    """Close the captures of the running loop (tests; the agent keeps them for its lifetime)."""
    loop = asyncio.get_running_loop()
    for cap in _CAPTURES.pop(loop, {}).values():
        cap.close()


@dataclass
class Reported:
    """What one camera's probe reported last: counters as totals, and when."""

    totals: dict[str, int] = field(default_factory=dict)
    at: float = 0.0  # Unix time of the last report; 0: none yet
    frames: int = 0
    bytes: int = 0


def as_dict(t: CameraTotals) -> dict[str, int]:
    return {f: getattr(t, f) for f in _COUNTED}
