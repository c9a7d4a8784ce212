"""What the collector knows: the newest value of every series of every agent.

Single-threaded (the aiohttp event loop owns it). ``apply`` takes a validated
report and never fails half-way: validation happened in agent.wire.parse.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from agent.wire import Histogram, Report
from collector.store import Store

Labels = tuple[tuple[str, str], ...]
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


class State:
    def __init__(self, store: Store, stale_after: float):
        self.store = store
        self.stale_after = stale_after
        self.nodes: dict[str, NodeState] = {}
        self.results: Counter[str] = Counter()  # reports by outcome
        self.samples = 0
        self.version = 0  # bumps on every change; /metrics caches on it

    def apply(self, r: Report, now: float) -> str:
        """Apply a report once. Returns "applied" or "duplicate"."""
        node = self.nodes.get(r.node)
        if node is None:
            node = self.nodes[r.node] = NodeState(site=r.site)
        node.site = r.site
        node.last_report = now
        node.reports += 1
        self.version += 1
        if r.seq <= self.store.hwm(r.node, r.stream):
            node.duplicates += 1
            return "duplicate"
        if r.agent_start > node.agent_start:
            if node.agent_start:
                node.restarts += 1
            node.agent_start = r.agent_start
        series = node.series
        for s in r.samples:
            key = (s.name, s.labels)
            cur = series.get(key)
            if cur is None or s.ts >= cur[1]:
                series[key] = (s.value, s.ts)
        self.samples += len(r.samples)
        self.store.commit(r.node, r.stream, r.seq)
        return "applied"

    def count(self, result: str) -> None:
        self.results[result] += 1
        self.version += 1

    def snapshot(self, now: float) -> Snapshot:
        nodes = {
            n: NodeState(
                s.site, s.last_report, s.agent_start, s.restarts, s.reports, s.duplicates, dict(s.series)
            )
            for n, s in self.nodes.items()
        }
        missing = {n: self.store.missing(n) for n in nodes}
        return Snapshot(now, self.stale_after, nodes, missing, dict(self.results), self.samples)
