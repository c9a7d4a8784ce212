"""Case-health probe: thermal zones and power supplies from fixture sysfs trees, and this machine's values."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
from netns_util import sysfs_file

from agent.config import loads, probe_list
from agent.probes.system import SystemConfig, collect, on_battery, power_supplies, thermal_zones


def _tree(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        sysfs_file(root, rel, text + "\n")
    return str(root)


def test_thermal_zones_by_type_with_duplicates_numbered(tmp_path: Path) -> None:
    sys = _tree(tmp_path, {
        "class/thermal/thermal_zone0/type": "acpitz", "class/thermal/thermal_zone0/temp": "41000",
        "class/thermal/thermal_zone1/type": "x86_pkg_temp", "class/thermal/thermal_zone1/temp": "63500",
        "class/thermal/thermal_zone2/type": "acpitz", "class/thermal/thermal_zone2/temp": "27800",
        "class/thermal/thermal_zone3/type": "broken", "class/thermal/thermal_zone3/temp": "n/a",
        "class/thermal/cooling_device0/type": "Processor",
    })
    assert thermal_zones(sys) == {"acpitz": 41.0, "x86_pkg_temp": 63.5, "acpitz_2": 27.8}
    assert thermal_zones(str(tmp_path / "missing")) == {}


def test_ups_on_battery_and_mains_online(tmp_path: Path) -> None:
    ups = {
        "class/power_supply/AC/type": "Mains", "class/power_supply/AC/online": "0",
        "class/power_supply/ups0/type": "UPS", "class/power_supply/ups0/capacity": "83",
        "class/power_supply/ups0/status": "Discharging",
    }
    sup = power_supplies(_tree(tmp_path, ups))
    assert [(s.name, s.type, s.online, s.capacity_ratio) for s in sup] == [
        ("AC", "Mains", 0.0, None), ("ups0", "UPS", None, 0.83)]
    assert on_battery(sup) == 1.0
    r = collect(SystemConfig(sys_root=str(tmp_path), disk_paths=[str(tmp_path)]))
    g = {(n, lb): v for n, lb, v in r.gauges}
    assert g[("mogli_case_battery_ratio", ())] == 0.83
    assert g[("mogli_case_on_battery", ())] == 1.0
    assert g[("mogli_case_power_supply_online", (("supply", "AC"),))] == 0.0


def test_battery_charging_from_energy_counters_is_not_on_battery(tmp_path: Path) -> None:
    sys = _tree(tmp_path, {
        "class/power_supply/AC0/type": "Mains", "class/power_supply/AC0/online": "1",
        "class/power_supply/BAT0/type": "Battery", "class/power_supply/BAT0/energy_now": "30000000",
        "class/power_supply/BAT0/energy_full": "40000000", "class/power_supply/BAT0/status": "Charging",
        "class/power_supply/BAT0/capacity": "99",  # energy_now/energy_full wins: finer than capacity
    })
    sup = power_supplies(sys)
    assert [s.capacity_ratio for s in sup] == [None, 0.75]
    assert on_battery(sup) == 0.0
    assert on_battery([s for s in sup if s.type == "Mains"]) is None  # no battery: no on_battery series


def test_no_battery_no_thermal_reports_the_rest_from_this_machine(tmp_path: Path) -> None:
    r = collect(SystemConfig(sys_root=str(tmp_path), disk_paths=[str(tmp_path)]))
    g = {n: v for n, _, v in r.gauges}
    assert "mogli_case_battery_ratio" not in g and "mogli_case_on_battery" not in g
    assert "mogli_case_temperature_celsius" not in g
    assert g["mogli_case_memory_total_bytes"] == psutil.virtual_memory().total
    assert 0 < g["mogli_case_memory_available_bytes"] <= g["mogli_case_memory_total_bytes"]
    assert abs(g["mogli_case_load1"] - os.getloadavg()[0]) < 2
    assert abs(g["mogli_case_disk_free_bytes"] - psutil.disk_usage(str(tmp_path)).free) < 64 * 2**20
    assert abs(g["mogli_case_boot_timestamp_seconds"] + g["mogli_case_uptime_seconds"] - time.time()) < 5


def test_disk_free_defaults_to_the_spool_directory() -> None:
    cfg = loads("node: n\nsite: s\nspool: {path: /srv/mogli/spool.db}\nprobes: {system: [{}], interfaces: [{}]}\n")
    kinds = dict(probe_list(cfg))
    assert kinds["system"].disk_paths == ["/srv/mogli"] and kinds["system"].target == "case"
    assert kinds["interfaces"].target == "all" and kinds["interfaces"].exclude == ["lo"]


def test_example_config_documents_these_probe_kinds() -> None:
    from helpers import ROOT

    from agent.config import load

    cfg = load(ROOT / "agent" / "example.yml")
    for kind in ("http", "interfaces", "wifi", "uplink", "system"):
        assert getattr(cfg.probes, kind), f"no {kind} block in example.yml"
    assert cfg.probes.wifi[0].peers == {"stage-bridge": "02:5e:10:00:00:0a"}
    assert cfg.probes.uplink[0].names["wwan0"] == "lte"


def test_cli_ad_hoc_probe_of_a_label_only_kind_needs_no_target() -> None:
    import json
    import subprocess

    from helpers import BIN

    r = subprocess.run([str(BIN / "mogli-agent"), "probe", "system", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["kind"], res["target"], res["success"]) == ("system", "case", True) and "load1" in res
    r = subprocess.run([str(BIN / "mogli-agent"), "probe", "http"], capture_output=True, text=True)
    assert r.returncode == 2 and "target: required key is missing" in r.stderr
