"""The ICMP engine: one socket per address family (and per DSCP/DF setting) for all targets.

The fping/liboping design on asyncio:

- Sockets are opened lazily, one per (family, kind, tos, don't-fragment) group, shared by
  every round of every ICMP probe on the event loop. ``kind`` is ``dgram`` (unprivileged
  "ping" sockets, allowed by ``net.ipv4.ping_group_range``) or ``raw`` (needs
  CAP_NET_RAW). ``auto`` tries dgram first, then raw; ``MOGLI_ICMP_SOCKET=dgram|raw``
  in the environment forces one for probes configured ``auto``.
- Sends are scheduled on one heap and sent from one timer: every wakeup sends all
  packets due within the next ``SLACK`` seconds, so 10,000 targets at 1 pps cost about
  fifty wakeups a second, not 20,000. The send time is taken right before sendto.
- Replies are read in the same wakeups (no reader callback, which would wake the loop
  for every reply): each socket is drained. Their receive time is the kernel's
  (SO_TIMESTAMPNS), so reading them a few milliseconds later costs no accuracy.
  Replies are matched by (address, sequence), plus the identifier and our payload token
  on raw sockets (datagram sockets only ever see replies to their own identifier).
- A probe awaits one future per round, not one per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import math
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

from agent.icmp import packet as pk

SocketKind = Literal["auto", "dgram", "raw"]

# Linux constants the socket module does not export on every Python version.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_PROBE = 3  # set DF, ignore the path-MTU cache: what an MTU check wants
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 4 << 20
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)

SLACK = 0.05
"""The engine's timer fires on multiples of this (the same grid as the runner's probe loops, so
their wakeups coincide) while rounds are active: it sends every packet due before the next grid
point (at most one per round), then reads every socket. Replies carry the kernel's receive
timestamp, so reading them up to SLACK late costs no accuracy: 10,000 targets at 1 pps cost ~20
wakeups a second, not 20,000."""
FAST_SLACK = 0.001
"""The tick while some round spaces its packets closer than 2 * SLACK (tests, ad hoc checks)."""

DUPLICATE_WAIT = 0.05
"""After the last reply of a round, duplicates are still counted for this long."""

ENV_SOCKET = "MOGLI_ICMP_SOCKET"
_TIMESPEC = struct.Struct("=qq")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(512)


class IcmpPermissionError(PermissionError):
    """Neither a datagram nor a raw ICMP socket may be opened."""


@dataclass
class Round:
    """One round of ``count`` echo requests to one address; the engine fills it in."""

    address: str
    family: int
    count: int
    packet_interval: float
    reply_timeout: float
    size: int
    group: _Group
    start_seq: int
    future: asyncio.Future[Round]
    sent: int = 0
    answered: int = 0
    send_ns: list[int] = field(default_factory=list)
    rtts: list[float | None] = field(default_factory=list)  # per packet, None: no (timely) reply
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # ICMP error kind -> count
    send_error: OSError | None = None
    mtu: int = 0  # next-hop MTU from a "fragmentation needed" / "packet too big" error
    done: bool = False
    next_due: float = 0.0
    end_due: float = float("inf")
    key: str = ""  # the address as replies name it (no %scope)
    data: bytes = b""  # the payload
    data_sum: int = 0  # its ones'-complement word sum (for the IPv4 checksum)

    @property
    def received(self) -> int:
        return sum(r is not None for r in self.rtts)

    def valid_rtts(self) -> list[float]:
        return [r for r in self.rtts if r is not None]


class _Group:
    """One socket: (family, kind, tos, df)."""

    def __init__(self, engine: Engine, family: int, kind: str, tos: int, df: bool):
        self.engine = engine
        self.family = family
        self.kind = kind
        self.raw = kind == "raw"
        self.sock = _open(family, kind, tos, df)
        self.ident = self.sock.getsockname()[1] if not self.raw else engine.ident
        self.pending: dict[tuple[str, int], tuple[Round, int]] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, rnd: Round) -> None:
        i = rnd.sent
        seq = (rnd.start_seq + i) & 0xFFFF
        pkt = pk.build_echo(self.family, self.ident if self.raw else 0, seq, rnd.data, rnd.data_sum)
        self.pending[(rnd.key, seq)] = (rnd, i)
        rnd.sent = i + 1
        rnd.rtts.append(None)
        rnd.send_ns.append(time.time_ns())
        self.engine.packets_sent += 1
        try:
            self.sock.sendto(pkt, (rnd.address, 0))
        except OSError as e:  # counted as sent and lost; the error explains an all-lost round
            rnd.send_error = e
            if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                rnd.errors["unreachable"] = rnd.errors.get("unreachable", 0) + 1

    def drain(self) -> None:
        """Read every queued reply (and, for datagram sockets, every queued error)."""
        sock, family, raw, engine = self.sock, self.family, self.raw, self.engine
        pending, token, bufsize = self.pending, engine.token, engine.bufsize
        v6 = family == socket.AF_INET6
        for _ in range(10_000):  # drain, but never starve the loop forever
            try:
                data, anc, _, addr = sock.recvmsg(bufsize, _ANCBUF)
            except BlockingIOError:
                break
            except OSError:  # a pending socket error (an ICMP error on the socket): details follow in the errqueue
                self._drain_errqueue()
                continue
            rx_ns = 0
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    rx_ns = sec * 1_000_000_000 + nsec
            if not rx_ns:
                rx_ns = time.time_ns()
            try:
                ev = pk.parse(data, family, raw, addr[0])
            except pk.Malformed:
                engine.malformed += 1
                continue
            if ev is None:
                continue
            if raw and ev.ident != self.ident:
                continue
            if isinstance(ev, pk.EchoReply):
                payload = ev.data
                if not (payload.startswith(token) or token.startswith(payload)):
                    continue
                hit = pending.get((addr[0].partition("%")[0] if v6 else addr[0], ev.seq))
                if hit is None:
                    continue
                rnd, i = hit
                if rnd.rtts[i] is not None:
                    rnd.duplicates += 1
                    continue
                rtt = (rx_ns - rnd.send_ns[i]) / 1e9
                if rtt < 0 or rtt > rnd.reply_timeout:
                    continue  # late: counted as lost
                rnd.rtts[i] = rtt
                rnd.answered += 1
                if rnd.answered == rnd.count:
                    engine.settle(rnd)
            else:
                self._error(ev)
        if not raw:
            self._drain_errqueue()

    def _error(self, ev: pk.IcmpError) -> None:
        hit = self.pending.get((ev.dest, ev.seq))
        if hit is None:
            return
        rnd, _ = hit
        rnd.errors[ev.kind] = rnd.errors.get(ev.kind, 0) + 1
        if ev.mtu:
            rnd.mtu = ev.mtu

    def _drain_errqueue(self) -> None:
        level = socket.IPPROTO_IP if self.family == socket.AF_INET else socket.IPPROTO_IPV6
        want = IP_RECVERR if self.family == socket.AF_INET else IPV6_RECVERR
        for _ in range(10_000):
            try:
                data, anc, _, addr = self.sock.recvmsg(self.engine.bufsize, _ANCBUF, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            for lvl, typ, cdata in anc:
                if lvl == level and typ == want:
                    try:
                        ev = pk.parse_errqueue(data, self.family, cdata, str(addr[0]).partition("%")[0],
                                               pk.offender_address(cdata))
                    except pk.Malformed:
                        self.engine.malformed += 1
                        continue
                    if ev is not None:
                        self._error(ev)


def _open(family: int, kind: str, tos: int, df: bool) -> socket.socket:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    stype = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
    s = socket.socket(family, stype, proto)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # room for a burst of replies between two reads (10,000 targets: ~500 per 50 ms); beyond
        # net.core.rmem_max only with CAP_NET_ADMIN (SO_RCVBUFFORCE)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if family == socket.AF_INET:
            if tos:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE if df else IP_PMTUDISC_DONT)
            if kind == "raw":
                # pass only echo reply, destination unreachable, time exceeded (bit set = blocked)
                allowed = (1 << pk.ICMP_ECHO_REPLY) | (1 << pk.ICMP_DEST_UNREACH) | (1 << pk.ICMP_TIME_EXCEEDED)
                s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~allowed & 0xFFFFFFFF))
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            if tos:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_PROBE if df else IP_PMTUDISC_DONT)
            if kind == "raw":
                words = [0xFFFFFFFF] * 8
                for t in (pk.ICMP6_ECHO_REPLY, pk.ICMP6_DEST_UNREACH, pk.ICMP6_PACKET_TOO_BIG, pk.ICMP6_TIME_EXCEEDED):
                    words[t >> 5] &= ~(1 << (t & 31)) & 0xFFFFFFFF
                s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
            else:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    except BaseException:
        s.close()
        raise
    return s


class Engine:
    """All ICMP rounds of one event loop. Get it with :func:`get_engine`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random | None = None):
        self.loop = loop
        self.rng = rng or random.Random()
        self.ident = self.rng.randrange(1, 0x10000)
        self.token = self.rng.randbytes(pk.TOKEN_LEN)
        self.groups: dict[tuple[int, str, int, bool], _Group] = {}
        self.sends: list[tuple[float, int, Round]] = []  # (due, tie, round): next packet of a round
        self.ends: list[tuple[float, int, Round]] = []  # (due, tie, round): when an incomplete round gives up
        self._tie = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._payloads: dict[int, tuple[bytes, int]] = {}
        self.malformed = 0  # undecodable datagrams read (counted, dropped)
        self.packets_sent = 0  # echo requests handed to the kernel, all rounds (for benchmarks)
        self.bufsize = 2048  # recvmsg buffer: the largest payload in use plus headers
        self._active = 0  # rounds not finished
        self._fast = 0  # of those, rounds with packets closer than 2 * SLACK: tick at FAST_SLACK then

    def payload(self, size: int) -> tuple[bytes, int]:
        p = self._payloads.get(size)
        if p is None:
            data = pk.payload(self.token, size)
            p = self._payloads[size] = (data, pk.word_sum(data))
        return p

    def group(self, family: int, kind: SocketKind, tos: int, df: bool) -> _Group:
        if kind == "auto":
            forced = os.environ.get(ENV_SOCKET, "auto")
            kind = forced if forced in ("dgram", "raw") else "auto"  # type: ignore[assignment]
        kinds = ["dgram", "raw"] if kind == "auto" else [kind]
        for k in kinds:
            g = self.groups.get((family, k, tos, df))
            if g is not None:
                return g
        errors = []
        for k in kinds:
            try:
                g = _Group(self, family, k, tos, df)
            except PermissionError as e:
                errors.append(f"{k}: {e.strerror}")
                continue
            self.groups[(family, k, tos, df)] = g
            return g
        fam = "IPv4" if family == socket.AF_INET else "IPv6"
        raise IcmpPermissionError(
            errno.EPERM,
            f"cannot open an {fam} ICMP socket ({'; '.join(errors)}): allow the agent's group in "
            "net.ipv4.ping_group_range or give it CAP_NET_RAW",
        )

    def start(
        self, address: str, family: int, *, count: int, packet_interval: float, reply_timeout: float,
        size: int = 56, tos: int = 0, df: bool = False, kind: SocketKind = "auto",
    ) -> Round:
        """Schedule a round; await ``round.future``. Cancel with :meth:`cancel`."""
        g = self.group(family, kind, tos, df)
        key = address.partition("%")[0]
        start = self.rng.randrange(0x10000)
        for _ in range(8):  # another round to this address in flight: keep the sequence ranges apart
            if not any((key, (start + i) & 0xFFFF) in g.pending for i in range(count)):
                break
            start = self.rng.randrange(0x10000)
        rnd = Round(address, family, count, packet_interval, reply_timeout, size, g, start, self.loop.create_future())
        rnd.key = key
        rnd.data, rnd.data_sum = self.payload(size)
        self.bufsize = max(self.bufsize, size + 256)  # + IP header (raw IPv4) + ICMP header, with room
        rnd.next_due = self.loop.time()
        self._active += 1
        if packet_interval < 2 * SLACK:
            self._fast += 1
        self._push(rnd.next_due, rnd)
        return rnd

    def cancel(self, rnd: Round) -> None:
        """End a round early (its probe was cancelled, e.g. by the runner's timeout).

        Replies already queued are read first. A request still within its reply_timeout has no
        outcome yet: it is dropped from the round (neither sent nor lost), so a round cut short by
        a busy agent never reports loss that did not happen."""
        if rnd.done:
            return
        rnd.group.drain()
        if not rnd.done:
            limit = time.time_ns() - int(rnd.reply_timeout * 1e9)
            keep = [i for i in range(rnd.sent) if rnd.rtts[i] is not None or rnd.send_ns[i] <= limit]
            self.finish(rnd)  # uses rnd.sent to clear every pending entry
            rnd.rtts = [rnd.rtts[i] for i in keep]
            rnd.send_ns = [rnd.send_ns[i] for i in keep]
            rnd.sent = len(keep)

    def settle(self, rnd: Round) -> None:
        """Every request is answered: end the round after a short wait for duplicates."""
        due = self.loop.time() + min(rnd.reply_timeout, DUPLICATE_WAIT)
        if due < rnd.end_due:
            rnd.end_due = due
            heapq.heappush(self.ends, (due, next(self._tie), rnd))
            self._arm(due)

    def finish(self, rnd: Round) -> None:
        rnd.done = True
        self._active -= 1
        if rnd.packet_interval < 2 * SLACK:
            self._fast -= 1
        pending = rnd.group.pending
        for i in range(rnd.sent):
            pending.pop((rnd.key, (rnd.start_seq + i) & 0xFFFF), None)
        if not rnd.future.done():
            rnd.future.set_result(rnd)

    def _push(self, due: float, rnd: Round) -> None:
        heapq.heappush(self.sends, (due, next(self._tie), rnd))
        self._arm(due)

    def _slack(self) -> float:
        return FAST_SLACK if self._fast else SLACK

    def _arm(self, due: float) -> None:
        # a timer already due within the slack after ``due`` will do: fewer timer handles
        if due < self._timer_at - self._slack():
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        sends, ends, tie = self.sends, self.ends, self._tie
        now = self.loop.time()
        slack = self._slack()
        horizon = now + slack  # sends a little early batch up; round ends never come early
        later: list[Round] = []
        while sends and sends[0][0] <= horizon:
            due, _, rnd = heapq.heappop(sends)
            if rnd.done:
                continue
            rnd.group.send(rnd)
            if rnd.sent < rnd.count:
                rnd.next_due = due + rnd.packet_interval
                later.append(rnd)  # its next packet goes in a later wakeup, never two in one burst
            else:
                rnd.end_due = max(due, now) + rnd.reply_timeout
                heapq.heappush(ends, (rnd.end_due, next(tie), rnd))
        for rnd in later:
            heapq.heappush(sends, (rnd.next_due, next(tie), rnd))
        for g in self.groups.values():
            g.drain()
        while ends and ends[0][0] <= now:
            _, _, rnd = heapq.heappop(ends)
            if not rnd.done:
                self.finish(rnd)
        if self._active:  # replies are read when the timer fires: poll while rounds wait
            # on the grid: sends at the grid point before they are due, ends at the one after
            nxt = (math.floor(now / slack) + 1) * slack
            if sends:
                nxt = min(nxt, max(now, math.floor(sends[0][0] / slack) * slack))
            self._arm(nxt)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for g in self.groups.values():
            g.close()
        self.groups.clear()


_ENGINES: dict[int, Engine] = {}  # id(loop) -> engine; entries of closed loops are closed and dropped


def get_engine() -> Engine:
    """The running loop's engine (created on first use, shared by every ICMP probe on the loop)."""
    loop = asyncio.get_running_loop()
    for key, old in list(_ENGINES.items()):
        if old.loop.is_closed():
            old.close()
            del _ENGINES[key]
    eng = _ENGINES.get(id(loop))
    if eng is None or eng.loop is not loop:
        eng = _ENGINES[id(loop)] = Engine(loop)
    return eng
