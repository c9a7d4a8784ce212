"""What the collector knows: the newest value of every series of every agent.

Single-threaded (the aiohttp event loop owns it). ``apply`` takes a validated
report and never fails half-way: validation happened in agent.wire.parse.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agent.catalog import METRICS
from agent.wire import Histogram, Report, Sample
from collector.store import Store

Labels = tuple[tuple[str, str], ...]
COUNTERS = frozenset(m.name for m in METRICS.values() if m.type == "counter")
SeriesKey = tuple[str, Labels]


@dataclass
class NodeState:
    site: str
    last_report: float = 0.0  # collector clock, seconds since the epoch
    agent_start: float = 0.0
    restarts: int = 0
    reports: int = 0
    duplicates: int = 0
    series: dict[SeriesKey, tuple[float | Histogram, float]] = field(default_factory=dict)
    clock_offset: float | None = None  # agent clock minus collector clock, seconds
    clock_corrected: bool = False
    late_samples: int = 0
    # each counter series' value before its latest update: the increase over the last report
    previous: dict[SeriesKey, float | Histogram] = field(default_factory=dict)
    clock_estimates: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=8))


@dataclass(frozen=True)
class Snapshot:
    """An immutable view for one render of /metrics."""

    now: float
    stale_after: float
    nodes: dict[str, NodeState]
    missing: dict[str, int]
    results: dict[str, int]
    samples: int

    def live(self, node: NodeState) -> bool:
        return self.now - node.last_report <= self.stale_after


# Builds the remote-write bodies (samples, body) for late samples of one node; None: no backfill.
Backfill = Callable[[str, str, list[Sample]], list[tuple[int, bytes]]]


def estimate_offset(sent_at: float, rtt: float | None, received: float) -> float:
    """Agent clock minus collector clock.

    The agent stamped ``sent_at`` when it sent; the request took about half its
    previous round trip to arrive. Without a round trip we assume 0 (loopback).
    """
    return sent_at + (rtt or 0.0) / 2 - received


class State:
    def __init__(self, store: Store, stale_after: float, max_clock_offset: float = 5.0,
                 late_after: float = 20.0, backfill: Backfill | None = None):
        self.store = store
        self.stale_after = stale_after
        self.max_clock_offset = max_clock_offset
        self.late_after = late_after
        self.backfill = backfill
        self.nodes: dict[str, NodeState] = {}
        self.results: Counter[str] = Counter()  # reports by outcome
        self.samples = 0
        self.version = 0  # bumps on every change; /metrics caches on it

    def observe_clock(self, node: NodeState, sent_at: float | None, rtt: float | None, now: float) -> None:
        if sent_at is None:
            return
        node.clock_estimates.append((rtt if rtt is not None else 0.0, estimate_offset(sent_at, rtt, now)))
        # like NTP's clock filter: trust the estimate that travelled fastest
        node.clock_offset = min(node.clock_estimates)[1]
        node.clock_corrected = abs(node.clock_offset) > self.max_clock_offset

    def apply(self, r: Report, now: float, sent_at: float | None = None, rtt: float | None = None,
              oldest: int | None = None) -> str:
        """Apply a report once. Returns "applied" or "duplicate"."""
        node = self.nodes.get(r.node)
        if node is None:
            node = self.nodes[r.node] = NodeState(site=r.site)
        node.site = r.site
        node.last_report = now
        node.reports += 1
        self.version += 1
        self.observe_clock(node, sent_at, rtt, now)
        if self.store.seen(r.node, r.stream, r.seq):
            node.duplicates += 1
            return "duplicate"
        shift = node.clock_offset if node.clock_corrected and node.clock_offset is not None else 0.0
        if r.agent_start - shift > node.agent_start:
            if node.agent_start:
                node.restarts += 1
            node.agent_start = r.agent_start - shift
        series = node.series
        late: list[Sample] = []
        late_before = now - self.late_after
        for s in r.samples:
            if shift:
                s = s._replace(ts=s.ts - shift)
            key = (s.name, s.labels)
            cur = series.get(key)
            if cur is None or s.ts >= cur[1]:
                if cur is not None and s.name in COUNTERS:
                    node.previous[key] = cur[0]
                series[key] = (s.value, s.ts)
            if s.ts < late_before:
                late.append(s)
        self.samples += len(r.samples)
        node.late_samples += len(late)
        bodies = self.backfill(r.node, r.site, late) if (late and self.backfill) else []
        self.store.commit(r.node, r.stream, r.seq, oldest if oldest is not None and oldest <= r.seq else None, bodies)
        return "applied"

    def count(self, result: str) -> None:
        self.results[result] += 1
        self.version += 1

    def snapshot(self, now: float) -> Snapshot:
        nodes = {n: replace(s, series=dict(s.series), clock_estimates=deque()) for n, s in self.nodes.items()}
        missing = {n: self.store.missing(n) for n in nodes}
        return Snapshot(now, self.stale_after, nodes, missing, dict(self.results), self.samples)
