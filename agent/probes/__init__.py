"""The one registry of probe kinds: config validation and the runner both use it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.probes import http, icmp, interfaces, rtp, rtsp, system, tcp, uplink, wifi
from agent.probes.base import ProbeResult


@dataclass(frozen=True)
class ProbeKind:
    config: type[Any]  # frozen dataclass with at least target, name, interval, timeout
    run: Callable[[Any, ProbeResult], Awaitable[None]]
    doc: str


PROBES: dict[str, ProbeKind] = {
    "icmp": ProbeKind(icmp.IcmpConfig, icmp.run, "ICMP echo rounds to an IP address or host name"),
    "tcp": ProbeKind(tcp.TcpConfig, tcp.run, "TCP connect (and TLS handshake) to HOST:PORT"),
    "rtsp": ProbeKind(rtsp.RtspConfig, rtsp.run, "RTSP camera: OPTIONS, DESCRIBE (SDP), optional short PLAY"),
    "http": ProbeKind(http.HttpConfig, http.run, "HTTP(S) GET/HEAD with phase timings, status, body, cert expiry"),
    "interfaces": ProbeKind(interfaces.InterfacesConfig, interfaces.run,
                            "interface counters and link state (target: a label such as 'all')"),
    "system": ProbeKind(system.SystemConfig, system.run,
                        "case health: temperatures, load, memory, disk, battery, uptime (target: a label)"),
    "uplink": ProbeKind(uplink.UplinkConfig, uplink.run,
                        "default route interface and gateway, and a counter of changes (target: a label)"),
    "wifi": ProbeKind(wifi.WifiConfig, wifi.run,
                      "nl80211 station signal/bitrates per interface and configured peers (target: a label)"),
    "rtp": ProbeKind(rtp.RtpConfig, rtp.run, "passive RTP analysis of a camera's streams on an interface"),
}
