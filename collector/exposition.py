"""/metrics: a custom prometheus-client Collector over a snapshot of the state.

No labelled children live between scrapes: each ``collect()`` builds metric
families from one immutable snapshot, so a node that goes stale simply stops
appearing (STYLE.md, "Metrics").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent import __version__
from agent.catalog import METRICS
from agent.wire import Histogram
from collector.inventory import Inventory
from collector.remote_write import Writer
from collector.state import NodeState, Snapshot


@dataclass(frozen=True)
class OwnMetric:
    name: str
    type: str
    help: str
    labels: tuple[str, ...]


# The collector's own metrics (documented in docs/metrics.md like the agent's).
OWN_METRICS = {
    m.name: m
    for m in [
        OwnMetric("mogli_agent_up", "gauge",
                  "1 if the node reported within the stale time, else 0", ("node", "site")),
        OwnMetric("mogli_agent_last_report_timestamp_seconds", "gauge",
                  "When the node last reported (collector clock)", ("node", "site")),
        OwnMetric("mogli_agent_restarts_total", "counter",
                  "Agent process restarts seen by the collector", ("node", "site")),
        OwnMetric("mogli_collector_duplicate_batches_total", "counter",
                  "Batches received again after they were applied (acknowledged, not re-applied)",
                  ("node", "site")),
        OwnMetric("mogli_collector_missing_batches_total", "counter",
                  "Sequence numbers never received: batches the agent dropped from its spool",
                  ("node", "site")),
        OwnMetric("mogli_collector_reports_total", "counter",
                  "Report requests by result (applied, duplicate, bad_request, unauthorized, ...)",
                  ("result",)),
        OwnMetric("mogli_collector_samples_total", "counter", "Samples applied from reports", ()),
        OwnMetric("mogli_collector_info", "gauge", "Collector version; always 1", ("version",)),
        OwnMetric("mogli_agent_clock_offset_seconds", "gauge",
                  "Estimated agent clock minus collector clock (positive: the agent is ahead)", ("node", "site")),
        OwnMetric("mogli_agent_clock_corrected", "gauge",
                  "1 while the node's sample timestamps are corrected because its offset exceeds max_clock_offset",
                  ("node", "site")),
        OwnMetric("mogli_collector_late_samples_total", "counter",
                  "Samples that arrived later than remote_write.late_after (replayed from a spool)",
                  ("node", "site")),
        OwnMetric("mogli_collector_remote_write_requests_total", "counter",
                  "Backfill remote-write requests by outcome: sent, retried (5xx, network), dropped (4xx)",
                  ("outcome",)),
        OwnMetric("mogli_collector_remote_write_samples_total", "counter",
                  "Late samples written to Prometheus with their original timestamps", ()),
        OwnMetric("mogli_collector_remote_write_pending_samples", "gauge",
                  "Late samples stored and waiting to be written to Prometheus", ()),
        OwnMetric("mogli_site_info", "gauge", "The event from the inventory; always 1",
                  ("site", "title", "lat", "lon")),
        OwnMetric("mogli_node_info", "gauge", "A node (network case) from the inventory; always 1",
                  ("node", "site", "title", "lat", "lon", "role")),
        OwnMetric("mogli_camera_info", "gauge", "A camera from the inventory and the node it hangs off; always 1",
                  ("camera", "node", "site", "title", "lat", "lon")),
    ]
}


def _le(v: float) -> str:
    return "+Inf" if math.isinf(v) else repr(v)


def _coord(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def families(snap: Snapshot, inv: Inventory | None = None, writer: Writer | None = None,
             pending: int = 0, include_series: bool = True) -> Iterator[Metric]:
    fams: dict[str, Metric] = {}

    def fam(name: str) -> Metric:
        f = fams.get(name)
        if f is None:
            if name in OWN_METRICS:
                spec = OWN_METRICS[name]
                labels = list(spec.labels)
                typ, help_ = spec.type, spec.help
            else:
                a = METRICS[name]
                labels = [*a.labels, "node", "site"]
                typ, help_ = a.type, a.help
            if typ == "counter":
                f = CounterMetricFamily(name, help_, labels=labels)
            elif typ == "histogram":
                f = HistogramMetricFamily(name, help_, labels=labels)
            else:
                f = GaugeMetricFamily(name, help_, labels=labels)
            fams[name] = f
        return f

    fam("mogli_collector_info").add_metric([__version__], 1)  # type: ignore[attr-defined]
    nodes = dict(snap.nodes)
    if inv is not None:
        site = inv.site
        fam("mogli_site_info").add_metric(  # type: ignore[attr-defined]
            [site.id, site.title or site.id, _coord(site.lat), _coord(site.lon)], 1)
        for nid, ne in sorted(inv.nodes.items()):
            fam("mogli_node_info").add_metric(  # type: ignore[attr-defined]
                [nid, site.id, ne.title or nid, _coord(ne.lat), _coord(ne.lon), ne.role], 1)
            if nid not in nodes:  # in the inventory but never heard from: down
                nodes[nid] = NodeState(site=site.id)
        for cid, ce in sorted(inv.cameras.items()):
            ne = inv.nodes[ce.node]
            lat = ce.lat if ce.lat is not None else ne.lat
            lon = ce.lon if ce.lon is not None else ne.lon
            fam("mogli_camera_info").add_metric(  # type: ignore[attr-defined]
                [cid, ce.node, site.id, ce.title or cid, _coord(lat), _coord(lon)], 1)
    for node_id in sorted(nodes):
        n = nodes[node_id]
        live = snap.live(n)
        nl = [node_id, n.site]
        fam("mogli_collector_late_samples_total").add_metric(nl, n.late_samples)  # type: ignore[attr-defined]
        if n.clock_offset is not None:
            fam("mogli_agent_clock_offset_seconds").add_metric(nl, n.clock_offset)  # type: ignore[attr-defined]
            fam("mogli_agent_clock_corrected").add_metric(nl, 1 if n.clock_corrected else 0)  # type: ignore[attr-defined]
        fam("mogli_agent_up").add_metric(nl, 1 if live else 0)  # type: ignore[attr-defined]
        fam("mogli_agent_last_report_timestamp_seconds").add_metric(nl, n.last_report)  # type: ignore[attr-defined]
        fam("mogli_agent_restarts_total").add_metric(nl, n.restarts)  # type: ignore[attr-defined]
        fam("mogli_collector_duplicate_batches_total").add_metric(nl, n.duplicates)  # type: ignore[attr-defined]
        fam("mogli_collector_missing_batches_total").add_metric(  # type: ignore[attr-defined]
            nl, snap.missing.get(node_id, 0)
        )
        if not live or not include_series:
            continue  # stale: its series leave /metrics so Grafana shows the gap
        for (name, labels), (value, _ts) in sorted(n.series.items()):
            spec = METRICS.get(name)
            if spec is None:
                continue
            lv = [dict(labels).get(k, "") for k in spec.labels] + nl
            f = fam(name)
            if isinstance(value, Histogram):
                f.add_metric(lv, [(_le(le), c) for le, c in value.buckets], value.sum)  # type: ignore[attr-defined]
            else:
                f.add_metric(lv, value)  # type: ignore[attr-defined]
    for result, count in sorted(snap.results.items()):
        fam("mogli_collector_reports_total").add_metric([result], count)  # type: ignore[attr-defined]
    fam("mogli_collector_samples_total").add_metric([], snap.samples)  # type: ignore[attr-defined]
    if writer is not None:
        for outcome in ("sent", "retried", "dropped"):
            fam("mogli_collector_remote_write_requests_total").add_metric(  # type: ignore[attr-defined]
                [outcome], writer.requests[outcome])
        fam("mogli_collector_remote_write_samples_total").add_metric([], writer.samples_sent)  # type: ignore[attr-defined]
        fam("mogli_collector_remote_write_pending_samples").add_metric([], pending)  # type: ignore[attr-defined]
    yield from (fams[k] for k in sorted(fams))


class StateCollector(Collector):
    """Renders from a snapshot; ``pending`` is read on the event loop (SQLite stays on its thread)."""

    def __init__(self, snapshot: Callable[[float], Snapshot], inv: Inventory | None = None,
                 writer: Writer | None = None, pending: int = 0):
        self._snapshot = snapshot
        self._inv = inv
        self._writer = writer
        self._pending = pending

    def collect(self) -> Iterator[Metric]:
        yield from families(self._snapshot(time.time()), self._inv, self._writer, self._pending)


def registry_for(snapshot: Callable[[float], Snapshot], inv: Inventory | None = None,
                 writer: Writer | None = None, pending: int = 0) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StateCollector(snapshot, inv, writer, pending))
    return reg
