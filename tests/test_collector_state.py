"""Inventory info metrics, clock skew, live-first sending: against the real collector process."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    BIN,
    free_port,
    http_post,
    sample_value,
    scrape,
    start_collector,
    write_collector_config,
)

from agent import wire

FIX = Path(__file__).parent / "fixtures"
TOKENS = {"stiftsplatz": "tok-stiftsplatz-0123456789abcdef", "rathaus": "tok-rathaus-0123456789abcdef"}


def _post(port: int, node: str, seq: int, ts: float, sent_at: float, value: float = 1.0,
          stream: str = "abcdabcdabcdabcd") -> dict:
    import json

    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "switch")), value, ts)
    body = wire.encode(wire.Report(node, "maikerwe-2026", stream, seq, sent_at - 100, (s,)))
    status, raw = http_post(f"http://127.0.0.1:{port}/api/v1/reports", body, {
        "Content-Encoding": "gzip", "Authorization": f"Bearer {TOKENS[node]}",
        wire.SENT_AT_HEADER: f"{sent_at:.6f}", wire.LAST_RTT_HEADER: "0.002"})
    assert status == 200, raw
    return json.loads(raw)


def test_inventory_becomes_info_metrics_and_unheard_nodes_are_down(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_collector_config(tmp_path, port, TOKENS, inventory=str(FIX / "inventory.yml"))
    col = start_collector(tmp_path, port, cfg)
    try:
        _post(port, "stiftsplatz", 1, time.time(), time.time())
        m = scrape(port)
        assert sample_value(m, "mogli_node_info", node="rathaus", title="Rathaus", lat="49.443530",
                            lon="7.771180", role="core") == 1
        # a camera without coordinates stands at its node
        assert sample_value(m, "mogli_camera_info", camera="cam-rathaus-1", node="rathaus", lat="49.443530") == 1
        assert sample_value(m, "mogli_site_info", site="maikerwe-2026", title="Maikerwe 2026") == 1
        assert sample_value(m, "mogli_agent_up", node="stiftsplatz") == 1
        assert sample_value(m, "mogli_agent_up", node="rathaus") == 0  # in the inventory, never reported
    finally:
        col.stop()


def test_bad_inventory_is_refused_with_file_and_line(tmp_path: Path) -> None:
    cfg = write_collector_config(tmp_path, 1, TOKENS, inventory=str(FIX / "invalid-inventory.yml"))
    r = subprocess.run([str(BIN / "mogli-collector"), "check-config", "-c", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert "invalid-inventory.yml:5: cameras.cam-1.node: camera on undefined node 'schillerplatz'" in r.stderr
    cfg = write_collector_config(tmp_path, 1, TOKENS, inventory=str(FIX / "invalid-inventory-coords.yml"))
    r = subprocess.run([str(BIN / "mogli-collector"), "check-config", "-c", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert "invalid-inventory-coords.yml:3: nodes.stiftsplatz.lon: required key is missing" in r.stderr
    assert "invalid-inventory-coords.yml:4: nodes.rathaus.lat: must be <= 90, got 149.4" in r.stderr


def test_clock_skew_of_an_hour_is_detected_and_corrected(tmp_path: Path) -> None:
    port = free_port()
    col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, TOKENS, max_clock_offset=5))
    try:
        skew = 3600.0
        now = time.time()
        # an agent booted without NTP: its clock is an hour ahead
        _post(port, "rathaus", 1, now + skew - 1, now + skew, value=0)
        _post(port, "stiftsplatz", 1, now, now)
        m = scrape(port)
        offset = sample_value(m, "mogli_agent_clock_offset_seconds", node="rathaus")
        assert offset is not None and abs(offset - skew) < 1.0
        assert sample_value(m, "mogli_agent_clock_corrected", node="rathaus") == 1
        assert abs(sample_value(m, "mogli_agent_clock_offset_seconds", node="stiftsplatz") or 99) < 0.5
        assert sample_value(m, "mogli_agent_clock_corrected", node="stiftsplatz") == 0
        # corrected: a sample measured (by the skewed clock) after the first one replaces it ...
        _post(port, "rathaus", 2, now + skew + 1, now + skew + 2, value=1)
        assert sample_value(scrape(port), "mogli_probe_success", node="rathaus") == 1
        # ... and the status API shows the corrected measurement time, not one an hour in the future
    finally:
        col.stop()


@pytest.mark.parametrize("skew", [-7200.0])
def test_negative_skew_too(tmp_path: Path, skew: float) -> None:
    port = free_port()
    col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, TOKENS))
    try:
        now = time.time()
        _post(port, "rathaus", 1, now + skew, now + skew)
        offset = sample_value(scrape(port), "mogli_agent_clock_offset_seconds", node="rathaus")
        assert offset is not None and abs(offset - skew) < 1.0
    finally:
        col.stop()


def test_camera_loss_is_judged_over_its_last_report_not_between_page_views() -> None:
    from collector.state import State
    from collector.status import StatusTracker, status
    from collector.store import Store

    st = State(Store(":memory:"), stale_after=60)
    t = time.time()

    def report(seq: int, packets: float, lost: float) -> None:
        cam = (("camera", "cam-1"),)
        st.apply(wire.Report("stiftsplatz", "s", "abcdabcdabcdabcd", seq, t, (
            wire.Sample("mogli_rtp_packets_total", cam, packets, t + seq),
            wire.Sample("mogli_rtp_lost_packets_total", cam, lost, t + seq),
            wire.Sample("mogli_rtp_last_packet_age_seconds", cam, 0.1, t + seq),
            wire.Sample("mogli_rtp_last_frame_age_seconds", cam, 0.1, t + seq))), t + seq)

    def cam_state() -> dict:
        (c,) = status(st.snapshot(time.time()), None, StatusTracker())["cameras"]
        return c

    report(1, 1000, 0)
    assert cam_state()["state"] == "ok"
    report(2, 1900, 100)  # 100 of the last 1000 packets lost
    c = cam_state()
    assert c["state"] == "lossy" and c["loss_ratio"] == pytest.approx(0.1)
    # a fresh tracker (another phone, a collector page reload) sees the same: the state lives in the reports
    assert cam_state()["loss_ratio"] == pytest.approx(0.1)
    report(3, 2900, 100)
    assert cam_state()["state"] == "ok"
