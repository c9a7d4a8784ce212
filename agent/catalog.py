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
       "Duration of one phase (resolve, connect, tls, first_byte, describe) in the last run that reached it",
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
    # --- rtsp: camera probe (agent/probes/rtsp.py); the runner adds probe/target --------------
    _m("mogli_rtsp_status_code", "gauge",
       "RTSP status code of the last answer the camera gave (0 before any)", "probe", "target"),
    _m("mogli_rtsp_stream_info", "gauge",
       "The camera's first video stream as described by SDP; always 1", "probe", "target", "codec"),
    _m("mogli_rtsp_frames_per_second", "gauge",
       "Video frames (RTP marker bits) per second during the last PLAY", "probe", "target", unit="hertz"),
    _m("mogli_rtsp_bitrate_bytes_per_second", "gauge",
       "RTP bytes per second (headers included) during the last PLAY", "probe", "target", unit="bytes"),
    _m("mogli_rtsp_first_frame_seconds", "gauge",
       "Time from sending PLAY to the end of the first video frame", "probe", "target", unit="seconds"),
    _m("mogli_rtsp_jitter_seconds", "gauge",
       "RFC 3550 interarrival jitter at the end of the last PLAY", "probe", "target", unit="seconds"),
    _m("mogli_rtsp_rtp_packets_total", "counter",
       "RTP packets received in PLAY sessions", "probe", "target"),
    _m("mogli_rtsp_rtp_lost_packets_total", "counter",
       "RTP packets lost in PLAY sessions (sequence number gaps)", "probe", "target"),
    _m("mogli_rtsp_backoff_seconds", "gauge",
       "Current extra delay before the next session with a failing camera (0 when healthy)",
       "probe", "target", unit="seconds"),
    # --- link quality beyond ICMP: http, interfaces, wifi, uplink, system (branch sysprobes) ------------
    # http (probe/target from the runner; phases in mogli_probe_phase_seconds)
    _m("mogli_http_status_code", "gauge", "HTTP status code of the last response", "probe", "target"),
    _m("mogli_http_content_length_bytes", "gauge",
       "Body length of the last response (bytes read; the Content-Length header for HEAD)", "probe", "target",
       unit="bytes"),
    _m("mogli_tls_cert_expiry_timestamp_seconds", "gauge",
       "notAfter of the peer's TLS certificate, seconds since epoch", "probe", "target", unit="seconds"),
    # interfaces: the kernel's own counters, reported as-is (labels: interface only)
    _m("mogli_interface_receive_bytes_total", "counter", "Bytes received (kernel counter)", "interface",
       unit="bytes"),
    _m("mogli_interface_transmit_bytes_total", "counter", "Bytes sent (kernel counter)", "interface",
       unit="bytes"),
    _m("mogli_interface_receive_packets_total", "counter", "Packets received (kernel counter)", "interface"),
    _m("mogli_interface_transmit_packets_total", "counter", "Packets sent (kernel counter)", "interface"),
    _m("mogli_interface_receive_errors_total", "counter", "Receive errors (kernel counter)", "interface"),
    _m("mogli_interface_transmit_errors_total", "counter", "Transmit errors (kernel counter)", "interface"),
    _m("mogli_interface_receive_drops_total", "counter", "Received packets dropped (kernel counter)", "interface"),
    _m("mogli_interface_transmit_drops_total", "counter", "Outgoing packets dropped (kernel counter)",
       "interface"),
    _m("mogli_interface_carrier_changes_total", "counter",
       "Carrier up/down transitions (kernel counter; a flapping cable or radio)", "interface"),
    _m("mogli_interface_up", "gauge", "1 if the interface's operstate is up", "interface", unit="bool"),
    _m("mogli_interface_carrier", "gauge", "1 if the interface has carrier (link)", "interface", unit="bool"),
    _m("mogli_interface_speed_bytes_per_second", "gauge",
       "Negotiated link speed (absent when the driver does not report one)", "interface", unit="bytes"),
    _m("mogli_interface_mtu_bytes", "gauge", "MTU of the interface", "interface", unit="bytes"),
    # wifi: per interface aggregates; per-station series only for configured peers (label peer = their name)
    _m("mogli_wifi_stations", "gauge", "Stations associated with (or seen by) the interface", "interface"),
    _m("mogli_wifi_signal_min_dbm", "gauge", "Weakest station signal on the interface", "interface",
       unit="dbm"),
    _m("mogli_wifi_signal_avg_dbm", "gauge", "Mean station signal on the interface", "interface", unit="dbm"),
    _m("mogli_wifi_link_quality_ratio", "gauge",
       "Link quality from /proc/net/wireless as a share of the driver's maximum (fallback without nl80211)",
       "interface", unit="ratio"),
    _m("mogli_wifi_peer_signal_dbm", "gauge", "Signal of a configured peer station", "interface", "peer",
       unit="dbm"),
    _m("mogli_wifi_peer_tx_bitrate_bytes_per_second", "gauge", "Last transmit bitrate to a configured peer",
       "interface", "peer", unit="bytes"),
    _m("mogli_wifi_peer_rx_bitrate_bytes_per_second", "gauge", "Last receive bitrate from a configured peer",
       "interface", "peer", unit="bytes"),
    _m("mogli_wifi_peer_expected_throughput_bytes_per_second", "gauge",
       "The driver's expected throughput to a configured peer", "interface", "peer", unit="bytes"),
    _m("mogli_wifi_peer_inactive_seconds", "gauge", "Time since the last frame from a configured peer",
       "interface", "peer", unit="seconds"),
    _m("mogli_wifi_peer_tx_retries_total", "counter", "Transmit retries to a configured peer (kernel counter)",
       "interface", "peer"),
    _m("mogli_wifi_peer_tx_failed_total", "counter",
       "Failed transmissions to a configured peer (kernel counter)", "interface", "peer"),
    # uplink: which default route carries the traffic
    _m("mogli_uplink_info", "gauge",
       "Current default route: 1 for the interface and gateway in use, per address family",
       "interface", "gateway", "family", "uplink"),
    _m("mogli_uplink_changes_total", "counter",
       "Changes of the default route's interface or gateway seen by the agent", "family"),
    # system: case health
    _m("mogli_case_temperature_celsius", "gauge", "Temperature of a sensor in the case", "sensor",
       unit="celsius"),
    _m("mogli_case_load1", "gauge", "Load average over 1 minute"),
    _m("mogli_case_load5", "gauge", "Load average over 5 minutes"),
    _m("mogli_case_load15", "gauge", "Load average over 15 minutes"),
    _m("mogli_case_memory_available_bytes", "gauge", "Memory available for new work", unit="bytes"),
    _m("mogli_case_memory_total_bytes", "gauge", "Total memory", unit="bytes"),
    _m("mogli_case_disk_free_bytes", "gauge", "Free space on the file system holding path (the spool)", "path",
       unit="bytes"),
    _m("mogli_case_battery_ratio", "gauge", "Battery or UPS charge (0..1)", unit="ratio"),
    _m("mogli_case_on_battery", "gauge", "1 if running on battery (no mains power)", unit="bool"),
    _m("mogli_case_power_supply_online", "gauge", "1 if the power supply (mains, USB, UPS input) is online",
       "supply", unit="bool"),
    _m("mogli_case_uptime_seconds", "gauge", "Seconds since the system booted", unit="seconds"),
    _m("mogli_case_boot_timestamp_seconds", "gauge", "When the system booted, seconds since epoch",
       unit="seconds"),
    # --- passive RTP analysis (probe kind rtp; agent/rtp/live.py, docs/probes/rtp.md) --------------
    _m("mogli_rtp_packets_total", "counter", "RTP packets received from the camera, duplicates included",
       "camera"),
    _m("mogli_rtp_bytes_total", "counter", "Size of the camera's RTP packets (UDP payload)", "camera",
       unit="bytes"),
    _m("mogli_rtp_lost_packets_total", "counter",
       "RTP sequence numbers never received (RFC 3550 A.1 with wrap; late packets are not lost)", "camera"),
    _m("mogli_rtp_duplicate_packets_total", "counter", "RTP packets whose sequence number was already seen",
       "camera"),
    _m("mogli_rtp_reordered_packets_total", "counter",
       "RTP packets that arrived after a higher sequence number (late, not duplicate)", "camera"),
    _m("mogli_rtp_frames_total", "counter", "RTP packets with the marker bit (video: frames)", "camera"),
    _m("mogli_rtp_stalls_total", "counter", "Gaps of more than 1 s between packets of a camera stream",
       "camera"),
    _m("mogli_rtp_jitter_seconds", "gauge",
       "RFC 3550 A.8 interarrival jitter of the camera's most recently active stream", "camera",
       unit="seconds"),
    _m("mogli_rtp_last_packet_age_seconds", "gauge",
       "Time since the camera's last RTP packet (since capture start when none yet)", "camera", unit="seconds"),
    _m("mogli_rtp_last_frame_age_seconds", "gauge",
       "Time since the camera's last packet with the marker bit (since capture start when none yet)",
       "camera", unit="seconds"),
    _m("mogli_rtp_frames_per_second", "gauge", "Marker-bit packets per second since the previous report",
       "camera", unit="hertz"),
    _m("mogli_rtp_bitrate_bytes_per_second", "gauge", "RTP bytes per second since the previous report", "camera",
       unit="bytes"),
    _m("mogli_capture_kernel_drops_total", "counter",
       "Packets the kernel dropped before the capture socket read them (PACKET_STATISTICS)", "interface"),
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
# Label names of each metric in sorted order, as samples carry them (checked for every recorded sample).
SORTED_LABELS: dict[str, tuple[str, ...]] = {m.name: tuple(sorted(m.labels)) for m in _METRICS}
