"""Wi-Fi: nl80211 station info (pyroute2), aggregated per interface; per-station series for configured peers only.

Per interface: station count and min/avg signal. Per configured peer (label ``peer`` = its configured
name, never the MAC): signal, tx/rx bitrate, expected throughput, inactive time, and the kernel's
tx retry/failure counters as-is. Where nl80211 is not available (old or out-of-tree drivers),
``/proc/net/wireless`` gives link quality and signal per interface.

The message-to-values mapping (:func:`station`) and the /proc parser (:func:`parse_proc_wireless`)
are pure functions, tested with pyroute2 messages and byte fixtures.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.confload import check
from agent.probes.base import ProbeError, ProbeResult

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class Unavailable(ProbeError):
    reason = "unavailable"


def _peers(v: dict[str, str]) -> str | None:
    bad = [f"{k}: {m}" for k, m in v.items() if not _MAC_RE.fullmatch(m.lower())]
    if bad:
        return f"peer MACs must look like 02:00:5e:10:00:01: {bad}"
    if len({m.lower() for m in v.values()}) != len(v):
        return "two peers have the same MAC"
    return None


@dataclass(frozen=True)
class WifiConfig:
    target: str = field(default="wifi", metadata=check(pattern=r"[A-Za-z0-9_.:-]{1,64}"))  # a label
    name: str = ""
    interval: float = field(default=10.0, metadata=check(min=0.5, max=86400))
    timeout: float = field(default=5.0, metadata=check(min=0.1, max=300))
    interfaces: list[str] = field(default_factory=lambda: ["*"])  # glob patterns of wireless interfaces
    peers: dict[str, str] = field(default_factory=dict, metadata=check(validate=_peers))  # name -> MAC
    source: Literal["auto", "nl80211", "proc"] = "auto"
    proc_root: str = "/proc"
    proc_quality_max: float = field(default=70.0, metadata=check(min=1, max=255))  # most drivers: 70


@dataclass(frozen=True)
class Station:
    mac: str
    signal_dbm: float | None
    tx_bitrate: float | None  # bits/s
    rx_bitrate: float | None
    expected_throughput: float | None  # bits/s
    inactive_s: float | None
    tx_retries: float | None
    tx_failed: float | None


def _bitrate(rate: Any) -> float | None:
    """nl80211 rate_info: BITRATE32 (or the older 16-bit BITRATE) in units of 100 kbit/s."""
    if rate is None:
        return None
    v = rate.get_attr("NL80211_RATE_INFO_BITRATE32")
    if v is None:
        v = rate.get_attr("NL80211_RATE_INFO_BITRATE")
    return None if v is None else float(v) * 100_000


def station(msg: Any) -> Station | None:
    """One NL80211_CMD_NEW_STATION message (a pyroute2 nl80211cmd) -> values in base units."""
    mac = msg.get_attr("NL80211_ATTR_MAC")
    info = msg.get_attr("NL80211_ATTR_STA_INFO")
    if not mac or info is None:
        return None

    def num(name: str, scale: float = 1.0) -> float | None:
        v = info.get_attr(name)
        return None if v is None else float(v) * scale

    signal = num("NL80211_STA_INFO_SIGNAL")
    if signal is None:
        signal = num("NL80211_STA_INFO_SIGNAL_AVG")
    if signal is not None and signal > 0:  # int8 carried as unsigned by some encoders
        signal -= 256
    return Station(
        mac=str(mac).lower(),
        signal_dbm=signal,
        tx_bitrate=_bitrate(info.get_attr("NL80211_STA_INFO_TX_BITRATE")),
        rx_bitrate=_bitrate(info.get_attr("NL80211_STA_INFO_RX_BITRATE")),
        expected_throughput=num("NL80211_STA_INFO_EXPECTED_THROUGHPUT", 1000.0),  # kbit/s
        inactive_s=num("NL80211_STA_INFO_INACTIVE_TIME", 0.001),  # ms
        tx_retries=num("NL80211_STA_INFO_TX_RETRIES"),
        tx_failed=num("NL80211_STA_INFO_TX_FAILED"),
    )


def report_stations(cfg: WifiConfig, ifname: str, stations: list[Station], result: ProbeResult) -> None:
    result.gauge("mogli_wifi_stations", len(stations), interface=ifname)
    signals = [s.signal_dbm for s in stations if s.signal_dbm is not None]
    if signals:
        result.gauge("mogli_wifi_signal_min_dbm", min(signals), interface=ifname)
        result.gauge("mogli_wifi_signal_avg_dbm", sum(signals) / len(signals), interface=ifname)
    by_mac = {s.mac: s for s in stations}
    for peer, mac in sorted(cfg.peers.items()):
        s = by_mac.get(mac.lower())
        if s is None:
            continue
        def per_byte(bits: float | None) -> float | None:  # nl80211 gives bit/s; Prometheus wants bytes
            return None if bits is None else bits / 8

        for metric, v in (("mogli_wifi_peer_signal_dbm", s.signal_dbm),
                          ("mogli_wifi_peer_tx_bitrate_bytes_per_second", per_byte(s.tx_bitrate)),
                          ("mogli_wifi_peer_rx_bitrate_bytes_per_second", per_byte(s.rx_bitrate)),
                          ("mogli_wifi_peer_expected_throughput_bytes_per_second", per_byte(s.expected_throughput)),
                          ("mogli_wifi_peer_inactive_seconds", s.inactive_s)):
            if v is not None:
                result.gauge(metric, v, interface=ifname, peer=peer)
        for metric, v in (("mogli_wifi_peer_tx_retries_total", s.tx_retries),
                          ("mogli_wifi_peer_tx_failed_total", s.tx_failed)):
            if v is not None:
                result.counter_value(metric, v, interface=ifname, peer=peer)
        result.detail[f"{ifname}/{peer}"] = f"{s.signal_dbm} dBm"
    result.detail[ifname] = f"{len(stations)} stations"


# --- /proc/net/wireless (sans-io) ------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcLink:
    quality: float
    level_dbm: float | None  # None when the driver reports a relative level (>= 0)


def parse_proc_wireless(data: bytes) -> dict[str, ProcLink]:
    """``/proc/net/wireless``: two header lines, then ``iface: status link level noise ...``.

    Lines that do not parse (truncated, garbage) are skipped.
    """
    out: dict[str, ProcLink] = {}
    for line in data.decode("ascii", errors="replace").splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 3 or not name.strip():
            continue
        try:
            quality = float(fields[1].rstrip("."))
            level = float(fields[2].rstrip("."))
        except ValueError:
            continue
        out[name.strip()] = ProcLink(quality, level if level < 0 else None)
    return out


def report_proc(cfg: WifiConfig, links: dict[str, ProcLink], result: ProbeResult) -> None:
    import fnmatch

    for ifname, link in sorted(links.items()):
        if not any(fnmatch.fnmatchcase(ifname, p) for p in cfg.interfaces):
            continue
        result.gauge("mogli_wifi_link_quality_ratio", min(1.0, max(0.0, link.quality / cfg.proc_quality_max)),
                     interface=ifname)
        if link.level_dbm is not None:
            result.gauge("mogli_wifi_signal_avg_dbm", link.level_dbm, interface=ifname)
        result.detail[ifname] = f"quality {link.quality:g}/{cfg.proc_quality_max:g}"


# --- I/O ------------------------------------------------------------------------------------------------

async def _nl80211(cfg: WifiConfig, result: ProbeResult) -> None:
    import fnmatch
    import importlib

    # pyroute2 takes ~0.3 s to import: do it in a thread the first time, so the event loop (and the
    # timing of every other probe) does not stall; later runs find it in sys.modules.
    iwutil = await asyncio.to_thread(importlib.import_module, "pyroute2.iwutil")
    AsyncIW = iwutil.AsyncIW

    async with AsyncIW() as iw:
        await iw.setup_endpoint()
        ifaces = [(m.get_attr("NL80211_ATTR_IFNAME"), m.get_attr("NL80211_ATTR_IFINDEX"))
                  async for m in await iw.get_interfaces_dump()]
        for ifname, ifindex in sorted((str(n), int(i)) for n, i in ifaces if n and i is not None):
            if not any(fnmatch.fnmatchcase(ifname, p) for p in cfg.interfaces):
                continue
            stations = [s async for m in await iw.get_stations(ifindex) if (s := station(m)) is not None]
            report_stations(cfg, ifname, stations, result)


def _proc(cfg: WifiConfig, result: ProbeResult) -> None:
    path = Path(cfg.proc_root) / "net" / "wireless"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Unavailable(f"no nl80211 and no {path}: {e.strerror}") from None
    report_proc(cfg, parse_proc_wireless(data), result)
    result.detail["source"] = "proc"


async def run(cfg: WifiConfig, result: ProbeResult) -> None:
    if cfg.source == "proc":
        _proc(cfg, result)
        return
    try:
        await _nl80211(cfg, result)
        result.detail["source"] = "nl80211"
    except Exception as e:  # pyroute2's NetlinkError (no nl80211 family: no cfg80211 driver) or OSError
        if not _is_missing_family(e):
            raise
        if cfg.source == "nl80211":
            raise Unavailable("nl80211 is not available (no cfg80211 wireless driver loaded)") from None
        _proc(cfg, result)


def _is_missing_family(e: Exception) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    return isinstance(e, NetlinkError) and e.code in (2, 95)  # ENOENT: family not registered; EOPNOTSUPP
