"""The ICMP engine: one socket per address family (and per DSCP/DF setting) for all targets.

The fping/liboping design on asyncio:

- Sockets are opened lazily, one per (family, kind, tos, don't-fragment) group, shared by
  every round of every ICMP probe on the event loop. ``kind`` is ``dgram`` (unprivileged
  "ping" sockets, allowed by ``net.ipv4.ping_group_range``) or ``raw`` (needs
  CAP_NET_RAW). ``auto`` tries dgram first, then raw; ``MOGLI_ICMP_SOCKET=dgram|raw``
  in the environment forces one for probes configured ``auto``.
- Sends are kept in millisecond slots (a dict of lists, a small heap of slot numbers) and
  sent from one timer: every wakeup sends all packets due within the next ``SLACK``
  seconds, so 10,000 targets at 1 pps cost four wakeups a second, not 20,000, and no
  per-packet heap operation. The send time is taken right before sendto.
- Replies are read in the same wakeups (no reader callback, which would wake the loop
  for every reply): each socket is drained. Their receive time is the kernel's
  (SO_TIMESTAMPNS), so reading them a few milliseconds later costs no accuracy.
  Replies are matched by (address, sequence): the address names the rounds in flight to
  it, the sequence the packet within one; raw sockets also check the identifier and our
  payload token (datagram sockets only ever see replies to their own identifier). The
  common reply (an echo reply without IP options) is decoded inline; everything else
  goes through the sans-io parser (agent/icmp/packet.py). A socket is read with
  recvmmsg(2) (libc through ctypes), up to ``MMSG_BATCH`` replies a call, into buffers
  allocated once per socket and parsed in place with ``struct``; without recvmmsg (no
  libc symbol) or with ``MOGLI_ICMP_RECVMMSG=0`` in the environment, with one
  ``recvmsg`` per reply. Both read the same replies the same way.
- A round ends with one future (``icmp.run`` awaits it) or one callback (the ICMP fleet,
  agent/runner.py, which schedules every ICMP probe's rounds without a task each).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import heapq
import itertools
import logging
import math
import os
import random
import socket
import struct
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from agent.icmp import packet as pk

SocketKind = Literal["auto", "dgram", "raw"]
log = logging.getLogger("mogli.agent.icmp")

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

SLACK = 0.25
"""The engine's timer fires on multiples of this (a multiple of the runner's probe-loop grid, so
their wakeups coincide) while rounds are active: it sends every packet due before the next grid
point (at most one per round), reads every socket and ends the rounds that are due. Replies carry
the kernel's receive timestamp, so reading them up to SLACK late costs no accuracy; a round ends
up to SLACK after its last reply or timeout. Few large wakeups are much cheaper than many small
ones: every wakeup starts with cold CPU caches, and at 1,000 targets at 1 pps each the same work
cost the running agent 6.3-6.9 % of a core at 20 wakeups a second, 6.0 % at 12 and 5.1 % at 4 (one
session, timed in the agent's process)."""
SLACKS = (SLACK, 0.05, 0.001)
"""The tick is the largest of these with every active round's packets at least twice it apart
(a round sends at most one packet per tick; short packet intervals: tests, ad hoc checks) and,
down to 0.05, with the replies of one tick filling at most half of the smallest receive buffer
(a non-root agent's buffer is capped at net.core.rmem_max: the tick shrinks rather than drop replies)."""
REPLY_TRUESIZE = 1024
"""Receive-buffer bytes one queued reply takes, rounded up (a 64-byte echo reply on loopback: 832)."""

DUPLICATE_WAIT = 0.05
"""After the last reply of a round, duplicates are still counted for this long."""

ENV_SOCKET = "MOGLI_ICMP_SOCKET"
_TIMESPEC = struct.Struct("=qq")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(512)

ENV_RECVMMSG = "MOGLI_ICMP_RECVMMSG"
MMSG_BATCH = 64
"""Replies one recvmmsg call reads at most (64 calls for the ~2,500 replies one socket has queued at 10,000
targets per 250 ms tick; larger batches save little more and touch more buffer memory)."""
MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))  # int, not the IntFlag: its ``&`` is a Python call
MSG_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0x40))


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):  # the kernel's struct user_msghdr (glibc's and musl's struct msghdr)
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


@cache
def _libc_recvmmsg() -> Any:
    """libc's recvmmsg as a ctypes function, or None where there is none (looked up on first use)."""
    if not sys.platform.startswith("linux"):
        return None
    for name in (None, ctypes.util.find_library("c")):
        try:
            fn = ctypes.CDLL(name, use_errno=True).recvmmsg
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        return fn
    return None


def recvmmsg_available() -> bool:
    """Whether this system's libc has recvmmsg (the engine then reads replies with it)."""
    return _libc_recvmmsg() is not None


def raw_key(family: int, address: str) -> int | bytes:
    """An address (no %scope) as recvmmsg leaves a reply's source in its buffer, the key of ``_Group.rounds``:
    IPv4 as the native-order int of its four bytes, IPv6 as its 16 bytes. Replies are matched without
    making a string of their source."""
    b = socket.inet_pton(family, address)
    return int.from_bytes(b, sys.byteorder) if family == socket.AF_INET else b


def _layout(size: int, fields: list[tuple[int, str]]) -> struct.Struct:
    """A native-order Struct of ``size`` bytes reading ``fields`` (offset, struct code), padding skipped."""
    fmt, at = "=", 0
    for off, code in sorted(fields):
        assert off >= at, (off, at)
        fmt += f"{off - at}x{code}" if off > at else code
        at = off + struct.calcsize("=" + code)
    return struct.Struct(fmt + (f"{size - at}x" if size > at else ""))


_SIZE_T = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"
_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)
_MMSG_FIELDS = _layout(_MMSG_SIZE, [
    (_Msghdr.msg_namelen.offset, "I"), (_Msghdr.msg_controllen.offset, _SIZE_T),
    (_Msghdr.msg_flags.offset, "i"), (_Mmsghdr.msg_len.offset, "I"),
])
"""One mmsghdr as recvmmsg leaves it: msg_namelen, msg_controllen, msg_flags, msg_len."""
_NAME_ROOM = 32  # a sockaddr_in6 (28 bytes), 8-aligned: each message's name, then its control buffer
_CMSG_HDR = socket.CMSG_LEN(0)
_CMSG_TS_LEN = socket.CMSG_LEN(_TIMESPEC.size)
_META_SIZE = _NAME_ROOM + _ANCBUF
_CMSG = struct.Struct("=" + _SIZE_T + "ii")  # struct cmsghdr: cmsg_len, cmsg_level, cmsg_type


def _meta_layout(family: int) -> struct.Struct:
    """One message's name and control buffer: (the source address, as an int (IPv4) or 16 bytes (IPv6),
    then the first cmsg's length, level and type, then its data read as a timespec)."""
    addr = (4, "I") if family == socket.AF_INET else (8, "16s")
    return _layout(_META_SIZE, [addr, (_NAME_ROOM, _SIZE_T), (_NAME_ROOM + ctypes.sizeof(ctypes.c_size_t), "ii"),
                                (_NAME_ROOM + _CMSG_HDR, "qq")])


def _strided(buf: bytearray, offset: int, code: str, step: int) -> memoryview | None:
    """A view of the field at ``offset`` (struct ``code``) of every ``step``-byte record in ``buf``, or None when
    the field or the records are not aligned to the field's size."""
    size = struct.calcsize(code)
    if offset % size or step % size or len(buf) % size:
        return None
    view: memoryview = memoryview(buf).cast(code)  # type: ignore[call-overload]  # code: a str, not a literal
    return view[offset // size::step // size]


class _Bulk:
    """Views of one field of every message in _Mmsg's buffers: a batch whose messages are all plain echo replies to
    us, with their timestamp (on a datagram socket: every batch), is checked field by field in C and read without a
    struct unpack per message (at 10,000 targets, unpacking each reply's header, name and cmsg was a third of
    reading them)."""

    def __init__(self, mm: _Mmsg, token: bytes):
        h, m, d, hs, ms, st = mm.hdrs, mm.meta, mm.data, _MMSG_SIZE, _META_SIZE, mm.stride
        at = _NAME_ROOM + ctypes.sizeof(ctypes.c_size_t)  # the cmsg's level and type, one 8-byte word
        views = [_strided(h, _Mmsghdr.msg_len.offset, "I", hs), _strided(h, _Msghdr.msg_flags.offset, "i", hs),
                 _strided(h, _Msghdr.msg_namelen.offset, "I", hs), _strided(h, _Msghdr.msg_controllen.offset, "N", hs),
                 _strided(m, _NAME_ROOM, "N", ms), _strided(m, at, "Q", ms), _strided(m, 4, "I", ms),
                 _strided(m, _NAME_ROOM + _CMSG_HDR, "q", ms), _strided(m, _NAME_ROOM + _CMSG_HDR + 8, "q", ms),
                 _strided(d, 0, "B", st), _strided(d, 6, "H", st), _strided(d, 8, "Q", st)]
        self.ok = len(token) == 8 and at % 8 == 0 and all(v is not None for v in views)
        if not self.ok:
            return
        v = typing.cast(list[memoryview], views)
        (self.lens, self.flags, self.namelens, self.ctllens, self.clens, self.cmsg_kinds, self.addrs, self.secs,
         self.nsecs, self.types, self.seqs, self.tokens) = v
        self.cmsg_kind = int.from_bytes(struct.pack("=ii", socket.SOL_SOCKET, SO_TIMESTAMPNS), sys.byteorder)
        self.token = int.from_bytes(token, sys.byteorder)

    def plain(self, got: int) -> bool:
        """Whether the batch's ``got`` messages are all whole echo replies with our token and a timestamp."""
        return (self.flags[:got].tolist().count(0) == got and min(self.namelens[:got]) >= 8
                and min(self.ctllens[:got]) >= _CMSG_TS_LEN and min(self.clens[:got]) >= _CMSG_TS_LEN
                and self.cmsg_kinds[:got].tolist().count(self.cmsg_kind) == got
                and min(self.lens[:got]) >= 8 + pk.TOKEN_LEN
                and self.types[:got].tobytes().count(pk.ICMP_ECHO_REPLY) == got
                and self.tokens[:got].tolist().count(self.token) == got)

    def replies(self, got: int) -> Iterator[tuple[int, int, int, int]]:
        """(source as raw_key, kernel timestamp's seconds and nanoseconds, sequence) of a plain batch."""
        seqs = array.array("H", self.seqs[:got].tobytes())
        if sys.byteorder == "little":
            seqs.byteswap()  # network order
        return zip(self.addrs[:got], self.secs[:got], self.nsecs[:got], seqs, strict=True)


class _Mmsg:
    """recvmmsg's buffers for one socket, allocated once (again when the engine's ``bufsize`` grows):
    ``MMSG_BATCH`` mmsghdrs, each with one iovec into ``data`` (``stride`` bytes a message) and its name
    and control buffer in ``meta`` (``_META_SIZE`` bytes a message)."""

    def __init__(self, family: int, stride: int):
        self.fn = _libc_recvmmsg()
        self.stride = stride
        self.data = bytearray(MMSG_BATCH * stride)
        self.meta = bytearray(MMSG_BATCH * _META_SIZE)
        self.hdrs = bytearray(MMSG_BATCH * _MMSG_SIZE)
        self.meta_struct = _meta_layout(family)
        iovs = (_Iovec * MMSG_BATCH)()
        views = ctypes.c_char.from_buffer(self.data), ctypes.c_char.from_buffer(self.meta)
        data, meta = ctypes.addressof(views[0]), ctypes.addressof(views[1])
        hdrs = (_Mmsghdr * MMSG_BATCH).from_buffer(self.hdrs)
        for i in range(MMSG_BATCH):
            iovs[i].iov_base = data + i * stride
            iovs[i].iov_len = stride
            h = hdrs[i].msg_hdr
            h.msg_name = meta + i * _META_SIZE
            h.msg_namelen = 28
            h.msg_iov = ctypes.addressof(iovs[i])
            h.msg_iovlen = 1
            h.msg_control = meta + i * _META_SIZE + _NAME_ROOM
            h.msg_controllen = _ANCBUF
        self._keep = (iovs, hdrs, views)  # the mmsghdrs point into iovs; while viewed, no bytearray can move
        self.addr = ctypes.addressof(hdrs)
        self.pristine = bytes(self.hdrs)  # recvmmsg overwrites the lengths: put back before every call
        self.names: dict[int | bytes, str] = {}  # source address as read -> as replies name it
        self.bulk: _Bulk | None = None  # set by the datagram IPv4 sockets' _Group

    def name(self, family: int, raw: int | bytes) -> str:
        src = self.names.get(raw)
        if src is None:
            if len(self.names) >= 65536:  # a raw socket sees every sender: keep the cache bounded
                self.names.clear()
            b = raw.to_bytes(4, sys.byteorder) if isinstance(raw, int) else raw
            src = self.names[raw] = socket.inet_ntop(family, b)
        return src


class IcmpPermissionError(PermissionError):
    """Neither a datagram nor a raw ICMP socket may be opened."""


@dataclass(slots=True, eq=False)
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
    future: asyncio.Future[Round] | None  # None: ``on_done`` is called instead
    on_done: Callable[[Round], None] | None = None
    tag: int = 0  # the caller's (the fleet's index of the probe)
    at: float = 0.0  # loop time the first packet was due
    sent: int = 0
    answered: int = 0
    send_ns: list[int] = field(default_factory=list)  # per packet, the first ``sent`` of ``count``
    rtts: list[float | None] = field(default_factory=list)  # per packet, None: no (timely) reply (or not sent)
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # ICMP error kind -> count
    send_error: OSError | None = None
    mtu: int = 0  # next-hop MTU from a "fragmentation needed" / "packet too big" error
    done: bool = False
    next_due: float = 0.0
    end_due: float = float("inf")
    rkey: int | bytes = 0  # the address (no %scope) as replies carry it (raw_key)
    sockaddr: tuple[str, int] | tuple[str, int, int, int] = ("", 0)  # for sendto
    pkt: bytearray = field(default_factory=bytearray)  # the echo request; each send writes its checksum and sequence
    ident: int = 0  # the identifier we write (0 on datagram sockets: the kernel fills it in)
    csum_base: int = -1  # raw IPv4: the checksum's word sum without the sequence; -1: the kernel computes it

    def valid_rtts(self) -> list[float]:
        return [r for r in self.rtts if r is not None]


@cache
def _nones(count: int) -> list[None]:
    return [None] * count


_IDSEQ = struct.Struct("!HH")
_CSUM_ID_SEQ = struct.Struct("!HHH")  # an echo header from byte 2: checksum, identifier, sequence


class _Group:
    """One socket: (family, kind, tos, df)."""

    def __init__(self, engine: Engine, family: int, kind: str, tos: int, df: bool):
        self.engine = engine
        self.family = family
        self.kind = kind
        self.raw = kind == "raw"
        self.sock = _open(family, kind, tos, df)
        self.ident = self.sock.getsockname()[1] if not self.raw else engine.ident
        self.send_ident = self.ident if self.raw else 0  # datagram sockets: the kernel fills it in
        self.rounds: dict[int | bytes, list[Round]] = {}  # raw_key(address) -> its rounds not finished
        self.mm = self._mmsg() if engine.recvmmsg else None  # None: read with recvmsg

    def _mmsg(self) -> _Mmsg:
        mm = _Mmsg(self.family, self.engine.bufsize)
        if self.family == socket.AF_INET and not self.raw:
            bulk = _Bulk(mm, self.engine.token)
            mm.bulk = bulk if bulk.ok else None
        return mm

    def capacity(self) -> int:
        """Replies the socket holds at half its receive buffer."""
        return max(16, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // (2 * REPLY_TRUESIZE))

    def close(self) -> None:
        self.sock.close()

    def find(self, address: str, seq: int) -> tuple[Round, int] | None:
        """The round and packet index a reply (or error) about ``seq`` sent to ``address`` belongs to."""
        try:
            key = raw_key(self.family, address)
        except (OSError, ValueError):
            return None
        for rnd in self.rounds.get(key, ()):
            i = (seq - rnd.start_seq) & 0xFFFF
            if i < rnd.sent:
                return rnd, i
        return None

    def drain(self) -> None:
        """Read every queued reply (and, for datagram sockets, every queued error)."""
        if self.mm is not None:
            self._drain_mmsg(self.mm)
        else:
            self._drain_recvmsg()
        if not self.raw:
            self._drain_errqueue()

    def _drain_mmsg(self, mm: _Mmsg) -> None:
        """drain() with recvmmsg: up to MMSG_BATCH replies a call, parsed in place (see _drain_recvmsg, which
        reads one reply a call and decodes the same way)."""
        engine = self.engine
        if mm.stride != engine.bufsize:  # a round with a larger payload started
            mm = self.mm = self._mmsg()
        fd = self.sock.fileno()
        if fd < 0:
            return
        fn, hdrs_addr, hdrs, pristine, buf, stride = mm.fn, mm.addr, mm.hdrs, mm.pristine, mm.data, mm.stride
        hview, mview, hiter, miter = memoryview(hdrs), memoryview(mm.meta), _MMSG_FIELDS.iter_unpack, \
            mm.meta_struct.iter_unpack
        names, name, get_errno, bulk = mm.names, mm.name, ctypes.get_errno, mm.bulk
        family, raw, token, ident = self.family, self.raw, engine.token, self.ident
        now_ns, reply, checksum_ok = time.time_ns, self._reply, pk.checksum_ok
        v6 = family == socket.AF_INET6
        raw4 = raw and not v6
        off = 20 if raw4 else 0  # where the ICMP message starts (raw IPv4: after a 20-byte IP header)
        echo_reply = pk.ICMP6_ECHO_REPLY if v6 else pk.ICMP_ECHO_REPLY
        whole = off + 8 + len(token)  # an echo reply with our whole token
        echo = struct.Struct(f"!{off}xB3xHH{len(token)}s").unpack_from  # type, identifier, sequence, token
        namelen_min = 24 if v6 else 8  # up to the end of the address
        ts_len, sol_socket, again = _CMSG_TS_LEN, socket.SOL_SOCKET, (errno.EAGAIN, errno.EWOULDBLOCK)
        budget = 10_000  # drain, but never starve the loop forever
        while budget > 0:
            hdrs[:] = pristine
            got = fn(fd, hdrs_addr, min(MMSG_BATCH, budget), MSG_DONTWAIT, None)
            if got <= 0:
                err = get_errno() if got < 0 else errno.EAGAIN
                if err in again:
                    break
                if err != errno.EINTR:  # a pending socket error (an ICMP error on the socket): see the errqueue
                    budget -= 1
                    self._drain_errqueue()
                continue
            budget -= got
            if bulk is not None and bulk.plain(got):  # a datagram socket's usual batch: echo replies to us alone
                for a, sec, nsec, seq in bulk.replies(got):
                    reply(a, seq, sec * 1_000_000_000 + nsec)
                continue
            b = -stride  # where this message's data starts in buf
            for (namelen, ctllen, mflags, n), (a, clen, clevel, ctype, sec, nsec) in zip(
                    hiter(hview[:got * _MMSG_SIZE]), miter(mview[:got * _META_SIZE]), strict=True):
                b += stride
                if mflags & MSG_TRUNC:
                    continue  # larger than the buffer, so larger than any reply to us
                if ctllen >= ts_len and clen >= ts_len and ctype == SO_TIMESTAMPNS and clevel == sol_socket:
                    rx_ns = sec * 1_000_000_000 + nsec
                else:
                    rx_ns = _timestamp(mm.meta, (b // stride) * _META_SIZE + _NAME_ROOM, ctllen) or now_ns()
                key = a if namelen >= namelen_min else b""  # b"": no round's
                # the common case inline: an echo reply with a whole token (on raw IPv4: in a 20-byte IP header,
                # good checksum); shorter ones and everything else as in _drain_recvmsg
                if n >= whole:
                    typ, rid, seq, tok = echo(buf, b)
                else:
                    typ = -1
                if typ == echo_reply and (not raw4 or (buf[b] == 0x45 and buf[b + 9] == 1)):
                    if raw4 and not checksum_ok(buf[b + 20:b + n]):
                        engine.malformed += 1
                        continue
                    if raw and rid != ident:
                        continue
                    if tok != token:
                        continue  # someone else's echo (a raw socket sees every reply)
                else:
                    src = (names.get(a) or name(family, a)) if key != b"" else ""
                    seq = self._other(bytes(buf[b:b + n]), src)
                    if seq < 0:
                        continue
                reply(key, seq, rx_ns)

    def _drain_recvmsg(self) -> None:
        """drain() with one recvmsg a reply (no recvmmsg, or MOGLI_ICMP_RECVMMSG=0)."""
        sock, family, raw, engine = self.sock, self.family, self.raw, self.engine
        token, bufsize, ident = engine.token, engine.bufsize, self.ident
        recvmsg, idseq, timespec, now_ns = sock.recvmsg, _IDSEQ.unpack_from, _TIMESPEC.unpack_from, time.time_ns
        v6 = family == socket.AF_INET6
        raw4 = raw and not v6
        off = 20 if raw4 else 0  # where the ICMP message starts (raw IPv4: after a 20-byte IP header)
        echo_reply = pk.ICMP6_ECHO_REPLY if v6 else pk.ICMP_ECHO_REPLY
        toklen = len(token)
        reply, checksum_ok, ancbuf, sol_socket = self._reply, pk.checksum_ok, _ANCBUF, socket.SOL_SOCKET
        for _ in range(10_000):  # drain, but never starve the loop forever
            try:
                data, anc, mflags, addr = recvmsg(bufsize, ancbuf)
            except BlockingIOError:
                break
            except OSError:  # a pending socket error (an ICMP error on the socket): details follow in the errqueue
                self._drain_errqueue()
                continue
            if mflags & MSG_TRUNC:
                continue  # larger than the buffer, so larger than any reply to us
            rx_ns = 0
            for level, typ, cdata in anc:  # just the timestamp: no other option asks for ancillary data
                if typ == SO_TIMESTAMPNS and level == sol_socket and len(cdata) >= 16:
                    sec, nsec = timespec(cdata)
                    rx_ns = sec * 1_000_000_000 + nsec
            if not rx_ns:
                rx_ns = now_ns()
            src = addr[0]
            if v6 and "%" in src:
                src = src.partition("%")[0]
            n = len(data)
            # the common case inline: an echo reply (on raw IPv4: in a 20-byte IP header, good checksum)
            if n >= off + 8 and data[off] == echo_reply and (not raw4 or (data[0] == 0x45 and data[9] == 1)):
                if raw4 and not checksum_ok(data[20:]):
                    engine.malformed += 1
                    continue
                rid, seq = idseq(data, off + 4)
                if raw and rid != ident:
                    continue
                if not token.startswith(data[off + 8:off + 8 + toklen]):
                    continue  # someone else's echo (a raw socket sees every reply)
            else:
                seq = self._other(data, src)
                if seq < 0:
                    continue
            try:
                key = raw_key(family, src)
            except (OSError, ValueError):
                continue
            reply(key, seq, rx_ns)

    def _reply(self, key: int | bytes, seq: int, rx_ns: int) -> None:
        """Our echo reply for request ``seq`` from ``key`` (raw_key of its source), received at ``rx_ns`` (every
        read path): into its round, a duplicate counted, a late one dropped, the round settled when every
        request is answered."""
        for rnd in self.rounds.get(key, ()):  # find() without its tuple: this runs for every reply
            i = (seq - rnd.start_seq) & 0xFFFF
            if i < rnd.sent:
                break
        else:
            return
        rtts = rnd.rtts
        if rtts[i] is not None:
            rnd.duplicates += 1
            return
        rtt = (rx_ns - rnd.send_ns[i]) / 1e9
        if rtt < 0 or rtt > rnd.reply_timeout:
            return  # late: counted as lost
        rtts[i] = rtt
        rnd.answered += 1
        if rnd.answered == rnd.count:
            self.engine.settle(rnd)

    def _other(self, data: bytes, src: str) -> int:
        """A datagram the inline path does not decode: the sequence number of our echo reply in it, else -1
        (an error about one of our requests is recorded, garbage counted as malformed, the rest ignored)."""
        engine = self.engine
        try:
            ev = pk.parse(data, self.family, self.raw, src)
        except pk.Malformed:
            engine.malformed += 1
            return -1
        if ev is None or (self.raw and ev.ident != self.ident):
            return -1
        if not isinstance(ev, pk.EchoReply):
            self._error(ev)
            return -1
        if not engine.token.startswith(ev.data[:len(engine.token)]):
            return -1
        return ev.seq

    def _error(self, ev: pk.IcmpError) -> None:
        hit = self.find(ev.dest, ev.seq)
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


def _timestamp(meta: bytearray, at: int, controllen: int) -> int:
    """The SO_TIMESTAMPNS time (ns) among the cmsgs at ``meta[at:at + controllen]``, or 0 (recvmmsg's
    replies, when the timestamp is not the first cmsg: no other option asks for one, so hardly ever)."""
    end, found = at + min(controllen, _ANCBUF), 0
    while at + _CMSG_HDR <= end:
        clen, level, typ = _CMSG.unpack_from(meta, at)
        if clen < _CMSG_HDR or at + clen > end:
            break
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and clen >= _CMSG_TS_LEN:
            sec, nsec = _TIMESPEC.unpack_from(meta, at + _CMSG_HDR)
            found = sec * 1_000_000_000 + nsec
        at += socket.CMSG_SPACE(clen - _CMSG_HDR)
    return found


def _scope_index(scope: str, address: str) -> int:
    """The interface index of an IPv6 scope (``fe80::1%eth0`` or ``%2``), found once per round: a
    sendto with the name would look the interface up for every packet."""
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        raise OSError(errno.ENODEV, f"no interface {scope!r} (the scope of {address})") from None


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
        self.slots: dict[int, list[Round]] = {}  # millisecond slot -> rounds whose next packet is due in it
        self.slot_heap: list[int] = []  # the slots' numbers, earliest first
        self.ends: list[tuple[float, int, Round]] = []  # (due, tie, round): when an incomplete round gives up
        self.exact_ends: list[float] = []  # ends of awaited rounds (a timeout is near): woken for, off the grid
        self._tie = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._payloads: dict[int, tuple[bytes, int]] = {}
        self._done: list[Round] = []  # finished rounds whose on_done is still to be called
        self.malformed = 0  # undecodable datagrams read (counted, dropped)
        self.packets_sent = 0  # echo requests handed to the kernel, all rounds (for benchmarks)
        self.bufsize = 2048  # recvmsg buffer: the largest payload in use plus headers
        self._active = 0  # rounds not finished
        self._spacing: dict[float, int] = {}  # packet_interval -> active rounds with it (see SLACKS)
        self._rate = 0.0  # packets a second of the active rounds
        self._tick_s = SLACK  # the timer's grid, see _retick
        forced = os.environ.get(ENV_SOCKET, "auto")
        self.forced: SocketKind = forced if forced in ("dgram", "raw") else "auto"  # type: ignore[assignment]
        self._resolved: dict[tuple[int, str, int, bool], _Group] = {}  # (family, asked kind, tos, df) -> group
        self.recvmmsg = os.environ.get(ENV_RECVMMSG, "1") != "0" and recvmmsg_available()  # else recvmsg

    def payload(self, size: int) -> tuple[bytes, int]:
        p = self._payloads.get(size)
        if p is None:
            data = pk.payload(self.token, size)
            p = self._payloads[size] = (data, pk.word_sum(data))
        return p

    def group(self, family: int, kind: SocketKind, tos: int, df: bool) -> _Group:
        g = self._resolved.get((family, kind, tos, df))
        if g is None:
            g = self._resolved[(family, kind, tos, df)] = self._group(family, kind, tos, df)
        return g

    def _group(self, family: int, kind: SocketKind, tos: int, df: bool) -> _Group:
        if kind == "auto":
            kind = self.forced
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
        at: float | None = None, on_done: Callable[[Round], None] | None = None, tag: int = 0,
    ) -> Round:
        """Schedule a round, its first packet at loop time ``at`` (default: now).

        Without ``on_done``, await ``round.future``; with it, ``on_done(round)`` is called from the
        engine's timer when the round ends (exceptions are logged, the engine goes on).
        Cancel with :meth:`cancel`."""
        g = self.group(family, kind, tos, df)
        rnd = Round(address, family, count, packet_interval, reply_timeout, size, g, 0,
                    None if on_done else self.loop.create_future(), on_done, tag)
        host, _, scope = address.partition("%")
        rnd.rkey = raw_key(family, host)
        host = socket.inet_ntop(family, socket.inet_pton(family, host))  # sendto reads it for every packet: a copy
        # made with the round, next to it in memory (the caller's string was made with the configuration)
        rnd.sockaddr = (host, 0, 0, _scope_index(scope, address)) if scope else (host, 0)
        data, data_sum = self.payload(size)
        rnd.ident = g.send_ident
        rnd.pkt = bytearray(pk.build_echo(family, rnd.ident, 0, data, data_sum))
        if family == socket.AF_INET and g.raw:  # datagram sockets and ICMPv6: the kernel fills the checksum in
            rnd.csum_base = (pk.ICMP_ECHO_REQUEST << 8) + rnd.ident + data_sum
        self.bufsize = max(self.bufsize, -(-(size + 256) // 64) * 64)  # + IP header (raw IPv4) + ICMP header,
        # with room; a multiple of 64, so recvmmsg's fields line up for _Mmsg.bulk
        self._begin(rnd, self.loop.time() if at is None else at)
        return rnd

    def again(self, rnd: Round, at: float) -> None:
        """Run a finished round with an ``on_done`` once more from loop time ``at``: same address,
        settings and callback, fresh results (the ICMP fleet's next round of a probe, without
        building a new Round)."""
        assert rnd.done and rnd.future is None, "again() is for finished rounds with on_done"
        rnd.sent = rnd.answered = rnd.duplicates = rnd.mtu = 0
        if rnd.errors:
            rnd.errors = {}
        rnd.send_error = None
        rnd.done = False
        rnd.end_due = float("inf")
        self._begin(rnd, at)

    def _begin(self, rnd: Round, at: float) -> None:
        bits, count = self.rng.getrandbits, rnd.count
        start = bits(16)
        rtts = rnd.rtts
        if len(rtts) == count:  # again(): the same lists, so a round's objects stay where they were allocated
            rtts[:] = _nones(count)  # send_ns is written before it is read
        else:
            rnd.send_ns, rnd.rtts = [0] * count, [None] * count  # filled in as the packets go and come back
        rounds = rnd.group.rounds
        others = rounds.get(rnd.rkey)
        if others is None:
            others = rounds[rnd.rkey] = []
        for _ in range(8 if others else 0):  # another round to this address in flight: keep sequences apart
            if not any((start - o.start_seq) & 0xFFFF < o.count or (o.start_seq - start) & 0xFFFF < count
                       for o in others):
                break
            start = bits(16)
        rnd.start_seq = start
        others.append(rnd)
        rnd.at = rnd.next_due = at
        self._active += 1
        self._rate += 1 / rnd.packet_interval
        n = self._spacing.get(rnd.packet_interval, 0)
        self._spacing[rnd.packet_interval] = n + 1
        if not n:
            self._retick()
        self._schedule([rnd])

    def cancel(self, rnd: Round) -> None:
        """End a round early (its probe was cancelled, e.g. by the runner's timeout).

        Replies already queued are read first. A request still within its reply_timeout has no
        outcome yet: it is dropped from the round (neither sent nor lost), so a round cut short by
        a busy agent never reports loss that did not happen. ``on_done`` is not called."""
        if rnd.done:
            return
        rnd.group.drain()
        if not rnd.done:
            limit = time.time_ns() - int(rnd.reply_timeout * 1e9)
            keep = [i for i in range(rnd.sent) if rnd.rtts[i] is not None or rnd.send_ns[i] <= limit]
            rnd.on_done = None
            self.finish(rnd)
            rnd.rtts = [rnd.rtts[i] for i in keep]
            rnd.send_ns = [rnd.send_ns[i] for i in keep]
            rnd.sent = len(keep)

    def settle(self, rnd: Round) -> None:
        """Every request is answered: end the round after a short wait for duplicates."""
        due = self.loop.time() + min(rnd.reply_timeout, DUPLICATE_WAIT)
        if due < rnd.end_due:
            rnd.end_due = due
            heapq.heappush(self.ends, (due, next(self._tie), rnd))
            if rnd.future is not None:
                heapq.heappush(self.exact_ends, due)
                self._arm(due)
            else:  # the fleet's rounds end on the grid: no wakeup of their own
                self._arm(math.ceil(due / self._tick_s) * self._tick_s)

    def finish(self, rnd: Round) -> None:
        rnd.done = True
        self._active -= 1
        self._rate = self._rate - 1 / rnd.packet_interval if self._active else 0.0
        spacing = self._spacing
        n = spacing[rnd.packet_interval] - 1
        if n:
            spacing[rnd.packet_interval] = n
        else:
            del spacing[rnd.packet_interval]
            self._retick()
        rounds = rnd.group.rounds
        others = rounds.get(rnd.rkey)
        if others is not None:
            others.remove(rnd)
            if not others and rnd.on_done is None:  # a fleet's round (on_done) comes again: keep its address's list
                del rounds[rnd.rkey]
        if rnd.future is not None:
            if not rnd.future.done():
                rnd.future.set_result(rnd)
        elif rnd.on_done is not None:  # only ticks finish such rounds (cancel clears on_done)
            self._done.append(rnd)  # called at the end of the tick, after the timer is armed again

    def _schedule(self, rounds: list[Round]) -> None:
        """Put each round in the slot of its next packet (``next_due``)."""
        slots = self.slots
        for rnd in rounds:
            slot = int(rnd.next_due * 1000)
            lst = slots.get(slot)
            if lst is None:
                slots[slot] = [rnd]
                heapq.heappush(self.slot_heap, slot)
                self._arm(rnd.next_due)
            else:
                lst.append(rnd)

    def _retick(self) -> None:
        """The tick for the closest spacing in use and the packet rate (see SLACKS): when either changes
        (a packet interval comes or goes; every tick, for the rate)."""
        closest = min(self._spacing, default=SLACK * 2)
        tick = next((s for s in SLACKS if closest >= 2 * s), SLACKS[-1])
        capacity = min((g.capacity() for g in self.groups.values()), default=0)
        while tick > SLACKS[1] and capacity and self._rate * tick > capacity:
            tick = SLACKS[SLACKS.index(tick) + 1]
        self._tick_s = tick

    def _arm(self, due: float) -> None:
        # a timer already due within the slack after ``due`` will do: fewer timer handles
        if due < self._timer_at - self._tick_s:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        slots, heap, ends, tie = self.slots, self.slot_heap, self.ends, self._tie
        now = self.loop.time()
        self._retick()
        slack = self._tick_s
        horizon = int((now + slack) * 1000)  # sends a little early batch up; round ends never come early
        later: list[Round] = []
        sent = 0
        header, time_ns, errs = _CSUM_ID_SEQ.pack_into, time.time_ns, (errno.EHOSTUNREACH, errno.ENETUNREACH)
        get_slot, push = slots.get, heapq.heappush
        while heap and heap[0] <= horizon:
            for rnd in slots.pop(heapq.heappop(heap)):
                if rnd.done:
                    continue
                g = rnd.group
                i = rnd.sent
                seq = (rnd.start_seq + i) & 0xFFFF
                pkt, base = rnd.pkt, rnd.csum_base
                if base >= 0:  # pk.build_echo's checksum, the payload's share summed once per round
                    base += seq
                    base = (base & 0xFFFF) + (base >> 16)
                    base = (base & 0xFFFF) + (base >> 16)
                    header(pkt, 2, ~base & 0xFFFF, rnd.ident, seq)
                else:
                    header(pkt, 2, 0, rnd.ident, seq)
                rnd.sent = i + 1
                rnd.send_ns[i] = time_ns()  # right before sendto: the RTT's start
                try:
                    g.sock.sendto(pkt, rnd.sockaddr)
                except OSError as e:  # counted as sent and lost; the error explains an all-lost round
                    rnd.send_error = e
                    if e.errno in errs:
                        rnd.errors["unreachable"] = rnd.errors.get("unreachable", 0) + 1
                sent += 1
                if i + 1 < rnd.count:  # its next packet goes in a later wakeup, never two in one burst
                    due = rnd.next_due = rnd.next_due + rnd.packet_interval
                    slot = int(due * 1000)
                    if slot <= horizon:  # behind, or packets closer than a tick: after this loop
                        later.append(rnd)
                        continue
                    lst = get_slot(slot)  # else into its slot at once (_schedule, inline: every packet does this)
                    if lst is None:
                        slots[slot] = [rnd]
                        push(heap, slot)
                    else:
                        lst.append(rnd)
                else:
                    rnd.end_due = max(rnd.next_due, now) + rnd.reply_timeout
                    heapq.heappush(ends, (rnd.end_due, next(tie), rnd))
                    if rnd.future is not None:
                        heapq.heappush(self.exact_ends, rnd.end_due)
        self.packets_sent += sent
        if later:
            self._schedule(later)
        for g in self.groups.values():
            g.drain()
        while ends and ends[0][0] <= now:
            due, _, rnd = heapq.heappop(ends)
            if not rnd.done and due == rnd.end_due:  # else superseded (settled early) or from a past run
                self.finish(rnd)
        if self._active:  # replies are read when the timer fires: poll while rounds wait
            # on the grid: sends at the grid point before they are due, ends at the one after
            nxt = (math.floor(now / slack) + 1) * slack
            if heap:
                nxt = min(nxt, max(now, math.floor(heap[0] / 1000 / slack) * slack))
            exact = self.exact_ends
            while exact and exact[0] <= now:
                heapq.heappop(exact)
            if exact:
                nxt = min(nxt, exact[0])
            self._arm(nxt)
        if self._done:
            done, self._done = self._done, []
            for rnd in done:
                try:
                    rnd.on_done(rnd)  # type: ignore[misc]
                except Exception:  # a bug in a caller must not stop every other round
                    log.exception("ICMP round callback for %s failed", rnd.address)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for g in self.groups.values():
            g.close()
        self.groups.clear()
        self._resolved.clear()


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
