"""The status page for incident staff: JSON and a phone page, from a real agent/collector run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    free_port,
    http_get,
    need,
    start_agent,
    start_collector,
    wait_until,
    write_agent_config,
    write_collector_config,
)

FIX = Path(__file__).parent / "fixtures"
TOKENS = {"stiftsplatz": "tok-stiftsplatz-0123456789abcdef", "rathaus": "tok-rathaus-0123456789abcdef"}


def _status(port: int) -> dict:
    status, body = http_get(f"http://127.0.0.1:{port}/api/v1/status")
    assert status == 200
    return json.loads(body)


def _node(st: dict, node: str) -> dict:
    return next(n for n in st["nodes"] if n["node"] == node)


def screenshot(url: str, out: Path, width: int = 412, height: int = 900) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    need(chromium is not None, "chromium is not installed (apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = out.parent / f".chromium-{out.stem}"
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={out}", url], capture_output=True, text=True, timeout=60)
    shutil.rmtree(profile, ignore_errors=True)
    assert r.returncode == 0 and out.exists() and out.stat().st_size > 1000, r.stderr[-2000:]


def test_node_states_with_since_in_json_html_and_chromium(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_collector_config(tmp_path, port, TOKENS, stale_after=3, inventory=str(FIX / "inventory.yml"))
    col = start_collector(tmp_path, port, cfg)
    agent = start_agent(tmp_path, write_agent_config(tmp_path, "stiftsplatz", TOKENS["stiftsplatz"], port, {
        "tcp": [{"target": f"127.0.0.1:{port}", "name": "collector", "interval": 0.5}]}))
    try:
        wait_until(lambda: _node(_status(port), "stiftsplatz")["state"] == "up", 15, "stiftsplatz up")
        st = _status(port)
        assert _node(st, "rathaus")["state"] == "down"  # in the inventory, never reported
        assert _node(st, "stiftsplatz")["title"] == "Stiftsplatz"
        assert {c["camera"] for c in st["cameras"]} == {"cam-rathaus-1", "cam-stiftsplatz-1"}
        assert next(c for c in st["cameras"] if c["camera"] == "cam-rathaus-1")["state"] == "down"

        agent.stop()
        stopped = time.time()
        down = wait_until(lambda: _node(_status(port), "stiftsplatz")["state"] == "down" and _status(port), 15,
                          "stiftsplatz down after its agent stopped")
        since = _node(down, "stiftsplatz")["since"]
        # the state began when the node went silent (+ stale time), not when somebody looked
        assert stopped - 1 <= since <= stopped + 3 + 1.5
        time.sleep(1.5)
        assert _node(_status(port), "stiftsplatz")["since"] == since

        status, de = http_get(f"http://127.0.0.1:{port}/")
        html = de.decode()
        assert status == 200 and "AUSGEFALLEN" in html and "Stiftsplatz" in html and "<script" not in html
        assert "http://" not in html.replace(f"http://127.0.0.1:{port}", "")  # no external assets
        en = http_get(f"http://127.0.0.1:{port}/?lang=en")[1].decode()
        assert "DOWN" in en and "Network cases" in en

        screenshot(f"http://127.0.0.1:{port}/", ROOT / "test-artifacts" / "status-page-node-down.png")
    finally:
        agent.stop()
        col.stop()
    assert "Traceback" not in col.output()


@pytest.mark.parametrize("path", ["/api/v1/status", "/?lang=xx", "/?lang=en&x=<script>"])
def test_status_endpoints_answer_without_any_data(tmp_path: Path, path: str) -> None:
    port = free_port()
    col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, TOKENS))
    try:
        status, body = http_get(f"http://127.0.0.1:{port}{path}")
        assert status == 200 and b"<script>" not in body
    finally:
        col.stop()


def test_frozen_camera_and_down_node_from_a_live_capture_in_chromium(tmp_path: Path) -> None:
    """A real agent captures a camera's RTP on lo; its picture freezes; a second node is down."""
    import os

    from rtpcam import RtpCamera

    need(os.geteuid() == 0, "live capture needs root (AF_PACKET)")
    cam = RtpCamera()
    port = free_port()
    col = start_collector(tmp_path, port, write_collector_config(
        tmp_path, port, TOKENS, stale_after=5, inventory=str(FIX / "inventory.yml")))
    agent = start_agent(tmp_path, write_agent_config(tmp_path, "stiftsplatz", TOKENS["stiftsplatz"], port, {
        "rtp": [{"target": f"127.0.0.1:{cam.port}", "interface": "lo", "name": "cam-stiftsplatz-1",
                 "interval": 0.5}]}))
    try:
        def cam_state() -> str:
            return next(c for c in _status(port)["cameras"] if c["camera"] == "cam-stiftsplatz-1")["state"]

        wait_until(lambda: cam_state() == "ok", 20, "camera ok")
        cam.frozen.set()
        t_freeze = time.time()
        wait_until(lambda: cam_state() == "frozen", 20, "camera frozen")
        frozen = next(c for c in _status(port)["cameras"] if c["camera"] == "cam-stiftsplatz-1")
        assert t_freeze <= frozen["since"] <= time.time() and frozen["last_frame_age_s"] > 3
        html = http_get(f"http://127.0.0.1:{port}/")[1].decode()
        assert "EINGEFROREN" in html and "Stiftsplatz Nord" in html and "AUSGEFALLEN" in html  # rathaus down
        screenshot(f"http://127.0.0.1:{port}/?lang=en", ROOT / "test-artifacts" / "status-page-camera-frozen.png")
        cam.frozen.clear()
        wait_until(lambda: cam_state() == "ok", 20, "camera ok again")
    finally:
        agent.stop()
        col.stop()
        cam.close()
