"""Passive RTP probe: per camera, what the live capture on an interface saw (agent/rtp/live.py).

Each configured camera is one probe entry; all cameras on one interface share one
AF_PACKET socket and kernel filter. Every run reports the camera's counters as
increments since the last run (the agent keeps totals) and its gauges.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field

from agent.confload import check
from agent.probes.base import ProbeResult
from agent.rtp import live

_COUNTERS = (
    ("mogli_rtp_packets_total", "packets"),
    ("mogli_rtp_bytes_total", "bytes"),
    ("mogli_rtp_lost_packets_total", "lost"),
    ("mogli_rtp_duplicate_packets_total", "duplicates"),
    ("mogli_rtp_reordered_packets_total", "reordered"),
    ("mogli_rtp_frames_total", "frames"),
    ("mogli_rtp_stalls_total", "stalls"),
)


def split_target(v: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """ADDRESS, ADDRESS:PORT or [IPv6]:PORT (IPv6 without port may be bare)."""
    port = 0
    host = v
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("IPv6 with a port is [ADDRESS]:PORT")
        if rest:
            port = int(rest[1:])
    elif v.count(":") == 1:
        host, _, p = v.partition(":")
        port = int(p)
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} must be 1..65535")
    return ipaddress.ip_address(host), port


def _target(v: str) -> str | None:
    try:
        split_target(v)
    except ValueError as e:
        return f"must be a camera ADDRESS, ADDRESS:PORT or [IPv6]:PORT ({e})"
    return None


@dataclass(frozen=True)
class RtpConfig:
    # the camera: its IP address (the source of its RTP packets) and optionally a UDP port on either side
    target: str = field(metadata=check(validate=_target, doc="ADDRESS[:PORT]"))
    # the interface the camera's traffic passes, e.g. eth1 (one capture per interface)
    interface: str = field(metadata=check(pattern=r"[A-Za-z0-9_.:@-]{1,15}"))
    name: str = ""  # value of the `camera` label; default: the target
    interval: float = field(default=5.0, metadata=check(min=0.5, max=3600))
    timeout: float = field(default=2.0, metadata=check(min=0.1, max=60))
    clock_rate: int = field(default=90000, metadata=check(min=0, max=1_000_000))  # dynamic PTs; 0: no jitter


async def run(cfg: RtpConfig, result: ProbeResult) -> None:
    cap = live.capture_for(cfg.interface)
    address, port = split_target(cfg.target)
    name = cfg.name or cfg.target
    first = name not in cap.cameras
    cap.add_camera(live.Camera(name, address, port, float(cfg.clock_rate)))
    if first:  # the capture was just told about this camera: give its packets a moment (1 s by default)
        await asyncio.sleep(cfg.timeout / 2)
    cap.read_ready()
    cap.poll_kernel_stats()
    now = time.time()
    tot = cap.totals(now)[name]
    rep = cap.reported.setdefault(name, live.Reported())
    cur = live.as_dict(tot)
    for metric, f in _COUNTERS:
        prev = rep.totals.get(f, 0)
        result.count(metric, max(0, cur[f] - prev), camera=name)
        rep.totals[f] = max(prev, cur[f])
    drops = cap.kernel_drops - cap.drops_reported
    cap.drops_reported = cap.kernel_drops
    result.count("mogli_capture_kernel_drops_total", drops, interface=cfg.interface)
    if tot.jitter is not None:
        result.gauge("mogli_rtp_jitter_seconds", tot.jitter, camera=name)
    result.gauge("mogli_rtp_last_packet_age_seconds", now - (tot.last_packet or cap.started), camera=name)
    result.gauge("mogli_rtp_last_frame_age_seconds", now - (tot.last_frame or cap.started), camera=name)
    if rep.at:
        dt = max(now - rep.at, 1e-3)
        result.gauge("mogli_rtp_frames_per_second", (cur["frames"] - rep.frames) / dt, camera=name)
        result.gauge("mogli_rtp_bitrate_bytes_per_second", (cur["bytes"] - rep.bytes) / dt, camera=name)
    rep.at, rep.frames, rep.bytes = now, cur["frames"], cur["bytes"]
    result.detail.update(packets=tot.packets, lost=tot.lost, duplicates=tot.duplicates, frames=tot.frames,
                         jitter_ms=None if tot.jitter is None else round(tot.jitter * 1000, 3))
