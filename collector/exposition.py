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
from collector.state import Snapshot


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
    ]
}


def _le(v: float) -> str:
    return "+Inf" if math.isinf(v) else repr(v)


def families(snap: Snapshot) -> Iterator[Metric]:
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
    for node_id in sorted(snap.nodes):
        n = snap.nodes[node_id]
        live = snap.live(n)
        nl = [node_id, n.site]
        fam("mogli_agent_up").add_metric(nl, 1 if live else 0)  # type: ignore[attr-defined]
        fam("mogli_agent_last_report_timestamp_seconds").add_metric(nl, n.last_report)  # type: ignore[attr-defined]
        fam("mogli_agent_restarts_total").add_metric(nl, n.restarts)  # type: ignore[attr-defined]
        fam("mogli_collector_duplicate_batches_total").add_metric(nl, n.duplicates)  # type: ignore[attr-defined]
        fam("mogli_collector_missing_batches_total").add_metric(  # type: ignore[attr-defined]
            nl, snap.missing.get(node_id, 0)
        )
        if not live:
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
    yield from (fams[k] for k in sorted(fams))


class StateCollector(Collector):
    def __init__(self, snapshot: Callable[[float], Snapshot]):
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self._snapshot(time.time()))


def registry_for(snapshot: Callable[[float], Snapshot]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StateCollector(snapshot))
    return reg
