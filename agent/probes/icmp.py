"""ICMP echo probe: one round of ``count`` echo requests per run, through the shared engine.

Per round: sent/received/duplicates counters, every RTT into a histogram, and the
round's min/avg/max/stddev RTT, jitter and loss ratio as gauges. A round without a
single reply fails with reason ``timeout`` (``unreachable`` when ICMP errors came
back); its sent/received totals are recorded all the same. See docs/probes/icmp.md.
"""

from __future__ import annotations

import errno
import math
import operator
import socket
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from agent.confload import check
from agent.icmp.engine import Round, SocketKind, get_engine
from agent.probes.base import Permission, ProbeError, ProbeResult, Timeout, Unreachable
from agent.probes.base import literal as base_literal
from agent.probes.base import resolve as resolve_host


class MtuExceeded(ProbeError):
    """Don't-fragment packets larger than the path (or interface) MTU."""

    reason = "mtu"


def _host(v: str) -> str | None:
    if not v or any(c.isspace() for c in v) or "/" in v:
        return "must be an IP address or a host name"
    return None


@dataclass(frozen=True)
class IcmpConfig:
    target: str = field(metadata=check(validate=_host, doc="IP address or host name"))
    name: str = ""  # label value for `target`; default: the target itself
    interval: float = field(default=10.0, metadata=check(min=0.1, max=86400))  # between round starts
    timeout: float = field(default=8.0, metadata=check(min=0.01, max=300))  # whole round
    count: int = field(default=10, metadata=check(min=1, max=10_000))  # echo requests per round
    packet_interval: float = field(default=0.5, metadata=check(min=0.001, max=60))  # spacing in a round
    reply_timeout: float = field(default=2.0, metadata=check(min=0.001, max=60))  # later replies are lost
    size: int = field(default=56, metadata=check(min=8, max=65_000))  # ICMP payload bytes
    dscp: int = field(default=0, metadata=check(min=0, max=63))
    dont_fragment: bool = False
    family: Literal["auto", "ipv4", "ipv6"] = "auto"
    socket: Literal["auto", "dgram", "raw"] = "auto"

    def round_time(self) -> float:
        return (self.count - 1) * self.packet_interval + self.reply_timeout

    def validate(self) -> list[tuple[str, str]]:
        if self.round_time() >= self.timeout:
            return [("timeout", f"must exceed (count - 1) * packet_interval + reply_timeout = "
                                f"{self.round_time():g} s, the longest a round can take")]
        return []


_FAMILIES = {"auto": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def literal(target: str, family: str) -> tuple[int, str] | None:
    """(address family, address) of an IP-address target; None for a host name."""
    return base_literal(target, _FAMILIES[family])


async def resolve(target: str, family: str) -> tuple[int, str]:
    """(address family, address) of the target; IP literals skip the resolver."""
    return literal(target, family) or await resolve_host(target, None, _FAMILIES[family], socket.SOCK_DGRAM)


class RoundStats(NamedTuple):  # a NamedTuple: the ICMP fleet makes one per round, thousands a second
    sent: int
    received: int
    duplicates: int
    loss_ratio: float
    rtt_min: float | None
    rtt_avg: float | None
    rtt_max: float | None
    rtt_stddev: float | None
    jitter: float | None  # mean |rtt[i] - rtt[i-1]| over consecutive received replies; None below 2 replies


def stats(rtts: list[float | None], sent: int, duplicates: int = 0) -> RoundStats:
    """The round's figures from its per-packet RTTs (None: lost), in send order."""
    return stats_of([r for r in rtts if r is not None], sent, duplicates)


def stats_of(got: list[float], sent: int, duplicates: int = 0) -> RoundStats:
    """:func:`stats` from the RTTs of the replies alone, in send order."""
    n = len(got)
    loss = 1.0 - n / sent if sent else 0.0
    if not got:
        return RoundStats(sent, 0, duplicates, loss, None, None, None, None, None)
    avg = math.fsum(got) / n
    # in C rather than Python loops (a third less; the fleet runs this ~1,000 times a second at 10,000 targets):
    sd = math.dist(got, [avg] * n) / math.sqrt(n)  # population stddev, like ping's mdev
    jitter = math.fsum(map(abs, map(operator.sub, got[1:], got))) / (n - 1) if n > 1 else None  # consecutive diffs
    return RoundStats(sent, n, duplicates, loss, min(got), avg, max(got), sd, jitter)


RTT_HISTOGRAM = "mogli_icmp_rtt_seconds"  # a round's RTTs, observed once per round
ROUND_GAUGES = ("mogli_icmp_loss_ratio", "mogli_icmp_rtt_min_seconds", "mogli_icmp_rtt_avg_seconds",
                "mogli_icmp_rtt_max_seconds", "mogli_icmp_rtt_stddev_seconds", "mogli_icmp_jitter_seconds")
"""The gauges of :func:`round_values`, in order: RoundStats from loss_ratio on."""
ROUND_COUNTERS = ("mogli_icmp_sent_total", "mogli_icmp_received_total", "mogli_icmp_duplicates_total")
"""The counters of :func:`round_values`, in order: RoundStats' sent, received, duplicates."""
NANO_VALUES = frozenset((*ROUND_GAUGES[1:], RTT_HISTOGRAM))
"""RTTs, from the kernel's nanosecond timestamps: reported to the nanosecond (agent/wire.py NANOS)."""


def round_values(st: RoundStats) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """A round's (gauges, counter increments), all on the probe/target series; the RTTs of
    ``Round.valid_rtts()`` go to the :data:`RTT_HISTOGRAM`."""
    counters = [(name, float(v)) for name, v in zip(ROUND_COUNTERS, st[:3], strict=True)]
    gauges = [(name, v) for name, v in zip(ROUND_GAUGES, st[3:], strict=True) if v is not None]
    if not st.sent:
        del gauges[0]  # no loss ratio without a request
    return gauges, counters


def _record(cfg: IcmpConfig, rnd: Round, result: ProbeResult) -> RoundStats:
    got = rnd.valid_rtts()
    st = stats_of(got, rnd.sent, rnd.duplicates)
    gauges, counters = round_values(st)
    for name, v in counters:
        result.count(name, v)
    result.observe(RTT_HISTOGRAM, *got)
    for name, v in gauges:
        result.gauge(name, v)

    def r9(v: float | None) -> float | None:
        return None if v is None else round(v, 9)

    result.detail.update(
        target=cfg.name or cfg.target, address=rnd.address, sent=st.sent, received=st.received,
        loss_ratio=round(st.loss_ratio, 6), rtt_min_s=r9(st.rtt_min), rtt_avg_s=r9(st.rtt_avg),
        rtt_max_s=r9(st.rtt_max), rtt_stddev_s=r9(st.rtt_stddev), jitter_s=r9(st.jitter),
    )
    if st.duplicates:
        result.detail["duplicates"] = st.duplicates
    if rnd.errors:
        result.detail["icmp_errors"] = dict(rnd.errors)
    return st


async def run(cfg: IcmpConfig, result: ProbeResult) -> None:
    fam, addr = await resolve(cfg.target, cfg.family)
    engine = get_engine()
    kind: SocketKind = cfg.socket
    try:
        rnd = engine.start(addr, fam, count=cfg.count, packet_interval=cfg.packet_interval,
                           reply_timeout=cfg.reply_timeout, size=cfg.size, tos=cfg.dscp << 2,
                           df=cfg.dont_fragment, kind=kind)
    except PermissionError as e:
        raise Permission(str(e.strerror or e)) from None
    assert rnd.future is not None  # started without on_done
    try:
        await rnd.future
    finally:  # also when the runner's timeout cancels us: what was sent is recorded
        engine.cancel(rnd)
        st = _record(cfg, rnd, result)
    check_round(rnd, st, cfg)


def check_round(rnd: Round, st: RoundStats, cfg: IcmpConfig) -> None:
    """Raise the failure of a round without a single reply (the runner turns it into a reason)."""
    if st.received:
        return
    addr = rnd.address
    if rnd.mtu or (rnd.send_error is not None and rnd.send_error.errno == errno.EMSGSIZE):
        mtu = f" (path MTU {rnd.mtu})" if rnd.mtu else ""
        raise MtuExceeded(f"{cfg.size}-byte payload with don't-fragment does not fit{mtu}")
    if rnd.errors:
        raise Unreachable(f"no reply from {addr}; ICMP errors: " +
                          ", ".join(f"{k} x{n}" for k, n in sorted(rnd.errors.items())))
    if rnd.send_error is not None:
        raise rnd.send_error
    raise Timeout(f"no reply from {addr} to {st.sent} echo requests")
