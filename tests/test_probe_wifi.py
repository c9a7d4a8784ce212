"""Wi-Fi probe: nl80211 station messages (built and byte-encoded with pyroute2, decoded as from the kernel)
mapped to values, per-peer series by name only, /proc/net/wireless parsing and the fallback to it.

No Wi-Fi hardware here (and no mac80211_hwsim): the nl80211 socket path itself is untested on hardware.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.nl80211 import NL80211_NAMES, nl80211cmd

from agent.confload import ConfigErrors, load_text
from agent.probes.base import ProbeResult
from agent.probes.wifi import WifiConfig, parse_proc_wireless, report_stations, run, station

BRIDGE = "02:5e:10:00:00:0a"  # the radio bridge to the stage (a configured peer)


def _sta(mac: str, info: list[list[Any]]) -> Any:
    """A NL80211_CMD_NEW_STATION message as the kernel sends it: encoded to bytes, then decoded."""
    m = nl80211cmd()
    m["cmd"] = NL80211_NAMES["NL80211_CMD_NEW_STATION"]
    m["attrs"] = [["NL80211_ATTR_IFINDEX", 3], ["NL80211_ATTR_MAC", mac], ["NL80211_ATTR_STA_INFO", {"attrs": info}]]
    m.encode()
    out = nl80211cmd(bytes(m.data))
    out.decode()
    return out


def _bridge() -> Any:
    return _sta(BRIDGE, [
        ["NL80211_STA_INFO_INACTIVE_TIME", 120], ["NL80211_STA_INFO_SIGNAL", -61],
        ["NL80211_STA_INFO_TX_RETRIES", 17], ["NL80211_STA_INFO_TX_FAILED", 2],
        ["NL80211_STA_INFO_EXPECTED_THROUGHPUT", 150_000],
        ["NL80211_STA_INFO_TX_BITRATE", {"attrs": [["NL80211_RATE_INFO_BITRATE32", 8667]]}],
        ["NL80211_STA_INFO_RX_BITRATE", {"attrs": [["NL80211_RATE_INFO_BITRATE", 540]]}],
    ])


def test_station_message_to_base_units() -> None:
    s = station(_bridge())
    assert s is not None
    assert s.mac == BRIDGE and s.signal_dbm == -61
    assert s.tx_bitrate == 866_700_000 and s.rx_bitrate == 54_000_000  # 100 kbit/s units
    assert s.expected_throughput == 150_000_000  # kbit/s
    assert s.inactive_s == 0.12 and (s.tx_retries, s.tx_failed) == (17, 2)
    # an older driver: only the average signal, no bitrates, no throughput
    old = station(_sta("02:00:00:00:00:01", [["NL80211_STA_INFO_SIGNAL_AVG", -80]]))
    assert old is not None and old.signal_dbm == -80 and old.tx_bitrate is None and old.expected_throughput is None
    # a message without station info is not a station
    m = nl80211cmd()
    m["cmd"] = NL80211_NAMES["NL80211_CMD_NEW_STATION"]
    m["attrs"] = [["NL80211_ATTR_IFINDEX", 3]]
    m.encode()
    bare = nl80211cmd(bytes(m.data))
    bare.decode()
    assert station(bare) is None


def test_aggregates_per_interface_and_series_only_for_configured_peers() -> None:
    msgs = [_bridge(), _sta("02:00:00:00:00:02", [["NL80211_STA_INFO_SIGNAL", -75]]),
            _sta("02:00:00:00:00:03", [["NL80211_STA_INFO_SIGNAL", -50]])]
    stations = [s for m in msgs if (s := station(m)) is not None]
    cfg = WifiConfig(peers={"stage-bridge": BRIDGE.upper(), "absent": "02:00:00:00:00:99"})
    r = ProbeResult()
    report_stations(cfg, "wlan0", stations, r)
    g = {(n, dict(lb).get("peer", "")): v for n, lb, v in r.gauges}
    assert g[("mogli_wifi_stations", "")] == 3
    assert g[("mogli_wifi_signal_min_dbm", "")] == -75
    assert g[("mogli_wifi_signal_avg_dbm", "")] == pytest.approx(-62)
    assert g[("mogli_wifi_peer_signal_dbm", "stage-bridge")] == -61
    assert g[("mogli_wifi_peer_expected_throughput_bytes_per_second", "stage-bridge")] == 150e6 / 8
    assert {p for (_, p) in g} == {"", "stage-bridge"}  # nothing for unconfigured stations or absent peers
    c = {(n, dict(lb)["peer"]): v for n, lb, v in r.counter_values}
    assert c == {("mogli_wifi_peer_tx_retries_total", "stage-bridge"): 17,
                 ("mogli_wifi_peer_tx_failed_total", "stage-bridge"): 2}
    labels = [v for _, lb, _ in r.gauges + r.counter_values for _, v in lb]
    assert not any(":" in v for v in labels)  # no MAC address ever becomes a label value
    r = ProbeResult()
    report_stations(cfg, "wlan1", [], r)
    assert [(n, v) for n, _, v in r.gauges] == [("mogli_wifi_stations", 0)]


PROC = (b"Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
        b" face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
        b" wlan0: 0000   54.  -56.  -256        0      0      0      0      0        0\n"
        b"wlan1: 0000   70.   -40.  -95.        0      0      0      3      0        0\n"
        b"  ath0: 0000   30    200    0        0      0      0      0      0        0\n")


def test_proc_net_wireless_parser() -> None:
    links = parse_proc_wireless(PROC)
    assert {k: (v.quality, v.level_dbm) for k, v in links.items()} == {
        "wlan0": (54, -56), "wlan1": (70, -40), "ath0": (30, None)}  # ath0: a relative level, not dBm
    assert parse_proc_wireless(PROC[:60]) == {}
    assert set(parse_proc_wireless(PROC[:200])) == {"wlan0"}  # a cut line is skipped, not misread
    assert parse_proc_wireless(b"\xff\x00garbage\n:\n\n wlan0: x y z\n") == {}
    assert parse_proc_wireless(b"") == {}


def _proc_root(tmp_path: Path) -> str:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "wireless").write_bytes(PROC)
    return str(tmp_path)


def test_proc_source_reports_quality_ratio_and_signal(tmp_path: Path) -> None:
    r = ProbeResult()
    asyncio.run(run(WifiConfig(source="proc", proc_root=_proc_root(tmp_path), interfaces=["wlan*"]), r))
    g = {(n, dict(lb)["interface"]): v for n, lb, v in r.gauges}
    assert g == {("mogli_wifi_link_quality_ratio", "wlan0"): pytest.approx(54 / 70),
                 ("mogli_wifi_signal_avg_dbm", "wlan0"): -56,
                 ("mogli_wifi_link_quality_ratio", "wlan1"): 1.0,
                 ("mogli_wifi_signal_avg_dbm", "wlan1"): -40}


def test_without_nl80211_auto_falls_back_to_proc_and_says_so(tmp_path: Path) -> None:
    if Path("/sys/module/cfg80211").exists():
        pytest.skip("this kernel has nl80211 (cfg80211 loaded): the fallback is not taken")
    r = ProbeResult()
    asyncio.run(run(WifiConfig(proc_root=_proc_root(tmp_path)), r))  # the real kernel answers: no nl80211
    assert r.detail["source"] == "proc" and len(r.gauges) == 5
    from agent.runner import run_probe

    out = asyncio.run(run_probe("wifi", WifiConfig(source="nl80211")))
    assert (out.ok, out.reason) == (False, "unavailable")
    out = asyncio.run(run_probe("wifi", WifiConfig(proc_root=str(tmp_path / "none"))))
    assert (out.ok, out.reason) == (False, "unavailable")
    assert str(tmp_path / "none" / "net" / "wireless") in str(out.detail["error"])  # says where it looked


def test_peer_config_is_checked() -> None:
    with pytest.raises(ConfigErrors) as e:
        load_text(json.dumps({"peers": {"a": "02:00:00:00:00:01", "b": "02:00:00:00:00:01", "c": "nope"}}),
                  WifiConfig, "w.yml")
    assert str(e.value).startswith("w.yml:1: peers: peer MACs must look like")
