"""Interfaces probe: sysfs link state from fixture trees, kernel counters as-is, and a real veth pair."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until
from netns_util import NetnsProbe, ip, namespaces, sysfs_file, value, veth

from agent.probes.base import ProbeResult
from agent.probes.interfaces import InterfacesConfig, collect, link_state, run, selected
from agent.recorder import Recorder
from agent.runner import record


def _iface(root: Path, name: str, **files: str) -> None:
    for k, v in files.items():
        sysfs_file(root, f"class/net/{name}/{k}", v + "\n")


def _snetio(rx: int, tx: int) -> Any:
    """What psutil.net_io_counters(pernic=True) holds per interface (same field names)."""
    proto = next(iter(psutil.net_io_counters(pernic=True).values()))
    return type(proto)(tx, rx, tx // 100, rx // 100, 1, 2, 3, 4)


def test_sysfs_link_state_from_a_fixture_tree(tmp_path: Path) -> None:
    _iface(tmp_path, "eth0", operstate="up", carrier="1", carrier_changes="7", speed="1000", mtu="9000")
    st = link_state("eth0", str(tmp_path))
    assert (st.up, st.carrier, st.carrier_changes, st.mtu) == (1.0, 1.0, 7.0, 9000.0)
    assert st.speed_bytes == 125_000_000  # 1 Gbit/s
    # a virtual or down link: speed -1, carrier unreadable (the kernel answers EINVAL: no file here)
    _iface(tmp_path, "wwan0", operstate="down", speed="-1", mtu="1500")
    st = link_state("wwan0", str(tmp_path))
    assert (st.up, st.carrier, st.speed_bytes, st.carrier_changes) == (0.0, None, None, None)
    # garbage in a file is skipped, not a crash
    _iface(tmp_path, "bad0", operstate="up", carrier="x", mtu="", speed="fast")
    st = link_state("bad0", str(tmp_path))
    assert (st.up, st.carrier, st.mtu, st.speed_bytes) == (1.0, None, None, None)


def test_include_exclude_patterns() -> None:
    inc, exc = ["eth*", "wlan*", "lo"], ["lo", "veth*"]
    assert [n for n in ("eth0", "wlan1", "lo", "veth12", "docker0") if selected(n, inc, exc)] == ["eth0", "wlan1"]


def test_counters_are_the_kernels_values_and_a_reset_shows_as_a_drop(tmp_path: Path) -> None:
    _iface(tmp_path, "eth0", operstate="up", carrier="1", carrier_changes="2", mtu="1500")
    _iface(tmp_path, "lo", operstate="unknown", mtu="65536")
    cfg = InterfacesConfig(sys_root=str(tmp_path))
    rec = Recorder()
    lab = (("interface", "eth0"),)
    for rx in (1000, 5000):  # cumulative kernel values, not increments
        record(rec, "interfaces", "all", True, "", 0.01, collect(cfg, {"eth0": _snetio(rx, 10), "lo": _snetio(1, 1)}),
               1.0)
        assert rec.total("mogli_interface_receive_bytes_total", lab) == rx
    # interface re-created: the kernel starts at 0 again; we report what the kernel says
    record(rec, "interfaces", "all", True, "", 0.01, collect(cfg, {"eth0": _snetio(300, 10)}), 2.0)
    samples = rec.drain()
    rx = [s.value for s in samples if s.name == "mogli_interface_receive_bytes_total"]
    assert rx == [1000, 5000, 300]
    assert not any(dict(s.labels).get("interface") == "lo" for s in samples)  # excluded by default
    assert all("target" not in dict(s.labels) for s in samples if s.name.startswith("mogli_interface_"))
    assert {s.name for s in samples} >= {"mogli_interface_carrier_changes_total", "mogli_interface_up",
                                         "mogli_interface_carrier", "mogli_interface_mtu_bytes",
                                         "mogli_probe_success"}


def test_runs_against_this_machine() -> None:
    r = ProbeResult()
    asyncio.run(run(InterfacesConfig(include=["*"], exclude=[]), r))
    names = {dict(lb)["interface"] for n, lb, _ in r.counter_values}
    assert "lo" in names


def _when(probe: NetnsProbe, metric: str, want: float) -> list[list[Any]] | None:
    """One run's samples if ``metric`` of mgv0 has the wanted value, else None (for wait_until)."""
    samples: list[list[Any]] = probe.run()["samples"]
    return samples if value(samples, metric, interface="mgv0") == want else None


@pytest.mark.netns
@pytest.mark.real
def test_veth_carrier_flaps_are_counted_and_traffic_grows_bytes() -> None:
    with namespaces(2) as (a, b):
        veth(a, "mgv0", b, "mgv1", "10.199.77.1/30", "10.199.77.2/30")
        probe = NetnsProbe(a, "interfaces", {"target": "all", "include": ["mgv*", "lo"], "exclude": ["lo"]})
        try:
            wait_until(lambda: _when(probe, "mogli_interface_up", 1), 10, "mgv0 up")
            first = probe.run()
            s0 = first["samples"]
            assert first["ok"] and {x[1].get("interface") for x in s0 if x[0].startswith("mogli_interface")} == {
                "mgv0"}
            assert value(s0, "mogli_interface_up", interface="mgv0") == 1
            assert value(s0, "mogli_interface_mtu_bytes", interface="mgv0") == 1500
            flaps0 = value(s0, "mogli_interface_carrier_changes_total", interface="mgv0")
            tx0 = value(s0, "mogli_interface_transmit_bytes_total", interface="mgv0")
            pk0 = value(s0, "mogli_interface_transmit_packets_total", interface="mgv0")
            assert flaps0 is not None and tx0 is not None and pk0 is not None

            ip("-n", b, "link", "set", "mgv1", "down")  # the far end goes away: we lose carrier
            # operstate follows carrier through the kernel's linkwatch (up to a second later)
            down = wait_until(lambda: _when(probe, "mogli_interface_up", 0), 10, "operstate down")
            assert value(down, "mogli_interface_carrier", interface="mgv0") == 0
            ip("-n", b, "link", "set", "mgv1", "up")
            up = wait_until(lambda: _when(probe, "mogli_interface_up", 1), 10, "link back up")
            assert value(up, "mogli_interface_carrier", interface="mgv0") == 1
            assert value(up, "mogli_interface_carrier_changes_total", interface="mgv0") == flaps0 + 2

            probe.udp("10.199.77.2", 9, 200, 1000)
            after = probe.run()["samples"]
            tx1 = value(after, "mogli_interface_transmit_bytes_total", interface="mgv0")
            pk1 = value(after, "mogli_interface_transmit_packets_total", interface="mgv0")
            assert tx1 is not None and pk1 is not None
            assert tx1 - tx0 >= 200 * 1028  # payload + UDP/IPv4 headers
            assert pk1 - pk0 >= 200
        finally:
            probe.close()


def test_recorder_keeps_kernel_counters_as_is_across_a_restart_of_the_agent() -> None:
    lab = (("interface", "eth0"),)
    rec = Recorder()
    rec.set_total("mogli_interface_receive_bytes_total", lab, 9000, 1.0)
    rec.set_total("mogli_interface_receive_bytes_total", lab, float("nan"), 2.0)  # not a counter value: ignored
    rec.set_total("mogli_interface_receive_bytes_total", lab, -1, 3.0)
    saved = rec.changed_totals()
    assert [s.value for s in rec.drain()] == [9000]
    again = Recorder()  # the agent restarted; the kernel kept counting
    again.load_totals(saved)
    again.set_total("mogli_interface_receive_bytes_total", lab, 9500, 4.0)
    assert [s.value for s in again.drain()] == [9500]  # the kernel's value, not 9000 + 9500
    with pytest.raises(ValueError):
        again.set_total("mogli_interface_receive_bytes_total", (), 1, 5.0)  # labels must match the catalog
