"""Case health: temperatures, load, memory, spool disk free, battery/UPS, uptime.

Readers of /sys take a ``sys`` root so tests point them at fixture trees. Everything
is read in a worker thread (a hung file system must not stall the event loop; the
runner's timeout still fires).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from agent.confload import check
from agent.probes.base import ProbeResult

_SENSOR_RE = re.compile(r"[^A-Za-z0-9_.:-]+")


@dataclass(frozen=True)
class SystemConfig:
    target: str = field(default="case", metadata=check(pattern=r"[A-Za-z0-9_.:-]{1,64}"))
    name: str = ""
    interval: float = field(default=30.0, metadata=check(min=1, max=86400))
    timeout: float = field(default=5.0, metadata=check(min=0.1, max=300))
    # file systems to report free space of; empty: the directory of the agent's spool ("/" ad hoc)
    disk_paths: list[str] = field(default_factory=list)
    sys_root: str = "/sys"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # missing, or EINVAL/ENODEV from a driver that has no value right now
        return None


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def sensor_name(text: str) -> str:
    return _SENSOR_RE.sub("_", text.strip())[:64] or "unknown"


def thermal_zones(sys: str = "/sys") -> dict[str, float]:
    """Temperatures (Celsius) of /sys/class/thermal/thermal_zone*, by zone type.

    Several zones of one type (``acpitz``) are told apart by their zone number: ``acpitz_1``.
    """
    base = Path(sys) / "class" / "thermal"
    try:
        zones = sorted((p for p in base.iterdir() if p.name.startswith("thermal_zone")),
                       key=lambda p: int(p.name[12:]) if p.name[12:].isdigit() else 0)
    except OSError:
        return {}
    out: dict[str, float] = {}
    for z in zones:
        milli = _num(_read(z / "temp"))
        if milli is None:
            continue
        name = sensor_name(_read(z / "type") or z.name)
        if name in out:
            name = f"{name}_{z.name[12:]}"
        out[name] = milli / 1000.0
    return out


def hwmon_temperatures() -> dict[str, float]:
    """psutil's /sys/class/hwmon temperatures as ``chip`` or ``chip_label``."""
    out: dict[str, float] = {}
    try:
        temps = psutil.sensors_temperatures()
    except (OSError, AttributeError):  # AttributeError: platform without sensors support
        return out
    for chip, entries in temps.items():
        for i, e in enumerate(entries):
            name = sensor_name(f"{chip}_{e.label}" if e.label else chip)
            if name in out:
                name = f"{name}_{i}"
            out[name] = float(e.current)
    return out


@dataclass(frozen=True)
class Supply:
    name: str
    type: str  # Mains, Battery, UPS, USB, ...
    online: float | None  # 1/0 for supplies that report it
    capacity_ratio: float | None  # batteries and UPS
    status: str  # Charging, Discharging, Full, ...


def power_supplies(sys: str = "/sys") -> list[Supply]:
    """/sys/class/power_supply/*: mains adapters, batteries, USB-attached UPS (via the kernel's hid driver)."""
    base = Path(sys) / "class" / "power_supply"
    try:
        dirs = sorted(base.iterdir())
    except OSError:
        return []
    out = []
    for d in dirs:
        typ = _read(d / "type") or ""
        online = _num(_read(d / "online"))
        ratio: float | None = None
        now = _num(_read(d / "energy_now")) or _num(_read(d / "charge_now"))
        full = _num(_read(d / "energy_full")) or _num(_read(d / "charge_full"))
        if now is not None and full:
            ratio = now / full
        else:
            cap = _num(_read(d / "capacity"))
            if cap is not None:
                ratio = cap / 100.0
        if ratio is not None:
            ratio = min(1.0, max(0.0, ratio))
        out.append(Supply(sensor_name(d.name), typ, online, ratio, _read(d / "status") or ""))
    return out


def on_battery(supplies: list[Supply]) -> float | None:
    """1 when a battery is discharging or no mains-type supply is online while one exists; None without batteries."""
    batteries = [s for s in supplies if s.type in ("Battery", "UPS") and s.capacity_ratio is not None]
    if not batteries:
        return None
    if any(s.status == "Discharging" for s in batteries):
        return 1.0
    mains = [s for s in supplies if s.online is not None and s.type not in ("Battery",)]
    if mains and not any(s.online for s in mains):
        return 1.0
    return 0.0


def collect(cfg: SystemConfig) -> ProbeResult:
    """Everything the probe reports, read synchronously (call from a thread)."""
    r = ProbeResult()
    temps = hwmon_temperatures() if cfg.sys_root == "/sys" else {}
    for k, v in thermal_zones(cfg.sys_root).items():
        temps.setdefault(k, v)
    for k, v in sorted(temps.items()):
        r.gauge("mogli_case_temperature_celsius", v, sensor=k)
    l1, l5, l15 = os.getloadavg()
    r.gauge("mogli_case_load1", l1)
    r.gauge("mogli_case_load5", l5)
    r.gauge("mogli_case_load15", l15)
    mem = psutil.virtual_memory()
    r.gauge("mogli_case_memory_available_bytes", mem.available)
    r.gauge("mogli_case_memory_total_bytes", mem.total)
    for p in cfg.disk_paths or ["/"]:
        try:
            r.gauge("mogli_case_disk_free_bytes", psutil.disk_usage(p).free, path=p)
        except OSError as e:
            r.detail[f"disk_error {p}"] = e.strerror or str(e)
    supplies = power_supplies(cfg.sys_root)
    batt = [s.capacity_ratio for s in supplies if s.type in ("Battery", "UPS") and s.capacity_ratio is not None]
    if batt:
        r.gauge("mogli_case_battery_ratio", min(batt))
    ob = on_battery(supplies)
    if ob is not None:
        r.gauge("mogli_case_on_battery", ob)
    for s in supplies:
        if s.online is not None:
            r.gauge("mogli_case_power_supply_online", 1.0 if s.online else 0.0, supply=s.name)
    boot = psutil.boot_time()
    r.gauge("mogli_case_boot_timestamp_seconds", boot)
    r.gauge("mogli_case_uptime_seconds", max(0.0, time.time() - boot))
    r.detail.update(
        load1=round(l1, 2), mem_available_mb=round(mem.available / 1e6),
        temps={k: round(v, 1) for k, v in sorted(temps.items())},
        uptime_s=round(time.time() - boot),
    )
    if batt:
        r.detail["battery"] = round(min(batt), 3)
    return r


async def run(cfg: SystemConfig, result: ProbeResult) -> None:
    got = await asyncio.to_thread(collect, cfg)
    result.gauges += got.gauges
    result.detail.update(got.detail)
