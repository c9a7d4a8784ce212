"""Network interfaces: the kernel's counters (psutil) and link state (sysfs).

Counters are the kernel's cumulative values, reported as-is (ProbeResult.counter_value);
a drop (interface re-created, reboot) is a counter reset that rate()/increase() handle.
Series carry the label ``interface`` only, not probe/target.
"""

from __future__ import annotations

import asyncio
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.confload import check
from agent.probes.base import ProbeResult

_COUNTERS = (  # psutil snetio field -> metric
    ("bytes_recv", "mogli_interface_receive_bytes_total"),
    ("bytes_sent", "mogli_interface_transmit_bytes_total"),
    ("packets_recv", "mogli_interface_receive_packets_total"),
    ("packets_sent", "mogli_interface_transmit_packets_total"),
    ("errin", "mogli_interface_receive_errors_total"),
    ("errout", "mogli_interface_transmit_errors_total"),
    ("dropin", "mogli_interface_receive_drops_total"),
    ("dropout", "mogli_interface_transmit_drops_total"),
)


def _patterns(v: list[str]) -> str | None:
    bad = [p for p in v if not p or "/" in p]
    return f"bad interface pattern(s): {bad}" if bad else None


@dataclass(frozen=True)
class InterfacesConfig:
    target: str = field(default="all", metadata=check(pattern=r"[A-Za-z0-9_.:-]{1,64}"))  # a label, e.g. "all"
    name: str = ""
    interval: float = field(default=10.0, metadata=check(min=0.5, max=86400))
    timeout: float = field(default=5.0, metadata=check(min=0.1, max=300))
    include: list[str] = field(default_factory=lambda: ["*"], metadata=check(validate=_patterns))
    exclude: list[str] = field(default_factory=lambda: ["lo"], metadata=check(validate=_patterns))
    sys_root: str = "/sys"


def selected(name: str, include: list[str], exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
        fnmatch.fnmatchcase(name, p) for p in exclude)


@dataclass(frozen=True)
class LinkState:
    up: float | None  # operstate == up
    carrier: float | None
    carrier_changes: float | None
    speed_bytes: float | None  # None when unknown (virtual, down, wireless)
    mtu: float | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # EINVAL reading carrier/speed of a down interface, or missing
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def link_state(name: str, sys: str = "/sys") -> LinkState:
    d = Path(sys) / "class" / "net" / name
    oper = _read(d / "operstate")
    carrier = _int(_read(d / "carrier"))
    speed = _int(_read(d / "speed"))  # Mbit/s; -1 or EINVAL when unknown
    return LinkState(
        up=None if oper is None else (1.0 if oper == "up" else 0.0),
        carrier=None if carrier is None else float(carrier != 0),
        carrier_changes=None if (c := _int(_read(d / "carrier_changes"))) is None else float(c),
        speed_bytes=speed * 1_000_000 / 8 if speed is not None and speed > 0 else None,
        mtu=None if (m := _int(_read(d / "mtu"))) is None else float(m),
    )


def sysfs_interfaces(sys: str = "/sys") -> list[str]:
    try:
        return sorted(p.name for p in (Path(sys) / "class" / "net").iterdir() if p.is_dir())
    except OSError:
        return []


def collect(cfg: InterfacesConfig, counters: dict[str, Any]) -> ProbeResult:
    """Values for every selected interface; ``counters`` is psutil.net_io_counters(pernic=True)."""
    r = ProbeResult()
    names = sorted(set(counters) | set(sysfs_interfaces(cfg.sys_root)))
    for ifname in names:
        if not selected(ifname, cfg.include, cfg.exclude):
            continue
        c = counters.get(ifname)
        if c is not None:
            for attr, metric in _COUNTERS:
                r.counter_value(metric, float(getattr(c, attr)), interface=ifname)
        st = link_state(ifname, cfg.sys_root)
        if st.carrier_changes is not None:
            r.counter_value("mogli_interface_carrier_changes_total", st.carrier_changes, interface=ifname)
        for metric, v in (("mogli_interface_up", st.up), ("mogli_interface_carrier", st.carrier),
                          ("mogli_interface_speed_bytes_per_second", st.speed_bytes),
                          ("mogli_interface_mtu_bytes", st.mtu)):
            if v is not None:
                r.gauge(metric, v, interface=ifname)
        state = "up" if st.up else "down"
        if st.carrier == 0:
            state += ",no-carrier"
        speed = f" {st.speed_bytes * 8 / 1e6:g}Mbit/s" if st.speed_bytes else ""
        traffic = f" rx={c.bytes_recv} tx={c.bytes_sent}" if c is not None else ""
        r.detail[ifname] = f"{state}{speed}{traffic}"
    return r


def _read_all(cfg: InterfacesConfig) -> ProbeResult:
    return collect(cfg, psutil.net_io_counters(pernic=True))


async def run(cfg: InterfacesConfig, result: ProbeResult) -> None:
    got = await asyncio.to_thread(_read_all, cfg)
    result.gauges += got.gauges
    result.counter_values += got.counter_values
    result.detail.update(got.detail)
