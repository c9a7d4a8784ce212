"""The one list of metrics an agent may report.

The agent records samples only under names listed here, the collector accepts
only these names (with these types and label names), and a test checks that
docs/metrics.md documents every one. Add a metric here first.

Labels ``node`` and ``site`` are added by the collector from the authenticated
report; agents never send them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    unit: str = ""


def _m(name: str, type: MetricType, help: str, *labels: str, unit: str = "") -> MetricSpec:
    return MetricSpec(name, type, help, tuple(labels), unit)


# Buckets for network round-trip and phase times (seconds): loopback to a slow LTE backup.
RTT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
)

_METRICS = [
    # --- every probe (the runner owns these) -------------------------------------------
    _m("mogli_probe_success", "gauge",
       "1 if the last run of the probe succeeded, 0 if it failed", "probe", "target", unit="bool"),
    _m("mogli_probe_duration_seconds", "gauge",
       "Wall time of the last probe run", "probe", "target", unit="seconds"),
    _m("mogli_probe_runs_total", "counter",
       "Probe runs since the agent's spool was created", "probe", "target"),
    _m("mogli_probe_failures_total", "counter",
       "Failed probe runs by reason (timeout, refused, unreachable, permission, protocol, ...)",
       "probe", "target", "reason"),
    _m("mogli_probe_phase_seconds", "gauge",
       "Duration of one phase (resolve, connect, tls, first_byte) in the last run that reached it",
       "probe", "target", "phase", unit="seconds"),
    # --- the agent itself -----------------------------------------------------------------
    _m("mogli_agent_info", "gauge", "Agent version; always 1", "version"),
    _m("mogli_agent_spool_batches", "gauge", "Batches waiting in the agent's disk spool"),
    _m("mogli_agent_spool_bytes", "gauge", "Size of the batches waiting in the spool", unit="bytes"),
    _m("mogli_agent_spool_oldest_age_seconds", "gauge",
       "Age of the oldest batch waiting in the spool (0 when empty)", unit="seconds"),
    _m("mogli_agent_spool_dropped_batches_total", "counter",
       "Batches dropped unsent because the spool reached its size or age limit"),
    _m("mogli_agent_send_errors_total", "counter",
       "Failed attempts to deliver a batch to the collector, by reason", "reason"),
    # --- ICMP echo probe (agent/probes/icmp.py, docs/probes/icmp.md) ------------------------
    _m("mogli_icmp_sent_total", "counter", "Echo requests sent", "probe", "target"),
    _m("mogli_icmp_received_total", "counter",
       "Echo replies received in time (duplicates not counted)", "probe", "target"),
    _m("mogli_icmp_duplicates_total", "counter", "Duplicate echo replies", "probe", "target"),
    _m("mogli_icmp_rtt_seconds", "histogram", "Round-trip time of each echo reply",
       "probe", "target", unit="seconds"),
    _m("mogli_icmp_rtt_min_seconds", "gauge", "Smallest RTT of the last round", "probe", "target", unit="seconds"),
    _m("mogli_icmp_rtt_avg_seconds", "gauge", "Mean RTT of the last round", "probe", "target", unit="seconds"),
    _m("mogli_icmp_rtt_max_seconds", "gauge", "Largest RTT of the last round", "probe", "target", unit="seconds"),
    _m("mogli_icmp_rtt_stddev_seconds", "gauge",
       "Population standard deviation of the RTTs of the last round", "probe", "target", unit="seconds"),
    _m("mogli_icmp_jitter_seconds", "gauge",
       "Mean absolute difference of consecutive RTTs in the last round", "probe", "target", unit="seconds"),
    _m("mogli_icmp_loss_ratio", "gauge",
       "Share of the last round's echo requests without a timely reply (0..1)", "probe", "target", unit="ratio"),
]

METRICS: dict[str, MetricSpec] = {m.name: m for m in _METRICS}
