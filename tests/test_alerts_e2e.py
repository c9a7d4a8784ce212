"""End to end, real processes: agents -> collector -> Prometheus (shipped rules) -> Alertmanager (rendered
template) -> webhook receiver standing in for the staff phone.

A healthy period with two 5-second blips (an agent frozen for 5 s, the probed service refusing for 5 s)
pushes nothing; then a node outage (agent SIGSTOPped) and a probe target going down each push once
within 30 s, and push "resolved" after recovery. The measured latencies are printed (run with -s) and
written to e2e-latency.json in the test's tmp dir; bench/alert_latency.py measures them over several runs.

The healthy period is the issue's 2 minutes (blips included); MOGLI_E2E_HEALTHY_SECONDS shortens it
for a quick local run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alerting import RULES_DIR, Alertmanager, AlertStack, WebhookReceiver, render_am_config, webhook_only_vars
from helpers import (
    Prometheus,
    free_port,
    need_root,
    start_agent,
    start_collector,
    wait_until,
    write_agent_config,
    write_collector_config,
)
from rtpcam import RtpCamera

HEALTHY_SECONDS = float(os.environ.get("MOGLI_E2E_HEALTHY_SECONDS", "120"))
PUSH_DEADLINE = 30.0  # the promise: a real fault reaches the phone within 30 s


@pytest.mark.real
@pytest.mark.timeout(300)
def test_node_outage_and_target_down_push_once_within_30s_and_resolve(tmp_path: Path) -> None:
    stack = AlertStack(tmp_path)
    try:
        stack.wait_healthy()
        rx = stack.rx
        # --- healthy period with 5-second blips: nothing may be pushed ------------------------------
        t_healthy = time.time()
        time.sleep(3)
        stack.stop_node("schillerplatz")
        stack.kasse.down()
        time.sleep(5)
        stack.resume_node("schillerplatz")
        stack.kasse.up()
        time.sleep(max(0.0, HEALTHY_SECONDS - (time.time() - t_healthy)))
        assert rx.pushes == [], f"pushed during the healthy period: {rx.pushes}"

        # --- faults -----------------------------------------------------------------------------------
        t_fault = time.time()
        stack.stop_node("schillerplatz")
        stack.kasse.down()
        silent = wait_until(lambda: rx.alerts("firing", alertname="MogliNodeSilent"), 45,
                            "node-silent push")
        down = wait_until(lambda: rx.alerts("firing", alertname="MogliTargetDown"), 45, "target-down push")
        lat = {"node_silent_push_s": silent[0][0] - t_fault, "target_down_push_s": down[0][0] - t_fault}
        assert silent[0][1]["labels"]["node"] == "schillerplatz"
        assert down[0][1]["labels"]["target"] == "kasse" and down[0][1]["labels"]["node"] == "stiftsplatz"
        ann = silent[0][1]["annotations"]
        assert ann["summary_de"].startswith("Knoten schillerplatz (schillerplatz) meldet sich seit"), ann
        assert ann["summary"].startswith("Node schillerplatz (schillerplatz) silent for"), ann
        # "since" comes from ALERTS_FOR_STATE in the real Prometheus: the moment the outage was first seen
        since = datetime.strptime(ann["since"][:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        assert t_fault + 5 < since < silent[0][0], (ann["since"], t_fault)

        # --- recovery ---------------------------------------------------------------------------------
        time.sleep(3)
        t_fix = time.time()
        stack.resume_node("schillerplatz")
        stack.kasse.up()
        ok_silent = wait_until(lambda: rx.alerts("resolved", alertname="MogliNodeSilent"), 60,
                               "node-silent resolved push")
        ok_down = wait_until(lambda: rx.alerts("resolved", alertname="MogliTargetDown"), 60,
                             "target-down resolved push")
        lat |= {"node_silent_resolved_s": ok_silent[0][0] - t_fix,
                "target_down_resolved_s": ok_down[0][0] - t_fix}
        print("fault-to-push latencies:", json.dumps({k: round(v, 1) for k, v in lat.items()}))
        (tmp_path / "e2e-latency.json").write_text(json.dumps(lat))

        assert lat["node_silent_push_s"] <= PUSH_DEADLINE, lat
        assert lat["target_down_push_s"] <= PUSH_DEADLINE, lat
        # exactly these two alerts, each pushed firing once (no repeat, no other alert kinds)
        fired = [(a["labels"]["alertname"], a["labels"]["node"]) for _, a in rx.alerts("firing")]
        assert sorted(fired) == [("MogliNodeSilent", "schillerplatz"), ("MogliTargetDown", "stiftsplatz")], \
            fired
    finally:
        stack.close()


@pytest.mark.real
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_camera_freeze_pushes_and_node_outage_does_not_push_its_cameras(tmp_path: Path) -> None:
    """A live RTP capture on the node: a frozen picture pushes MogliCameraFrozen within 30 s and a resolved
    push when the picture moves again; the node's outage then pushes MogliNodeSilent only, none for its
    camera (camera alerts wait while their node is silent; Alertmanager would inhibit them too)."""
    need_root()  # AF_PACKET capture
    rx = WebhookReceiver()
    cam = RtpCamera()
    procs: list[Any] = []
    token = "token-stiftsplatz-0123456789"
    try:
        inv = tmp_path / "inventory.yml"
        inv.write_text(
            "site: {id: testfest, title: Testfest, lat: 49.44, lon: 7.77}\n"
            "nodes:\n  stiftsplatz: {title: Stiftsplatz, lat: 49.4443, lon: 7.7689}\n"
            "cameras:\n  cam-stiftsplatz-1: {node: stiftsplatz, title: Stiftsplatz Nord}\n")
        port = free_port()
        col = start_collector(tmp_path, port, write_collector_config(
            tmp_path, port, {"stiftsplatz": token}, stale_after=60, inventory=str(inv)))
        procs.append(col)
        agent = start_agent(tmp_path, write_agent_config(tmp_path, "stiftsplatz", token, port, {
            "rtp": [{"target": f"127.0.0.1:{cam.port}", "interface": "lo", "name": "cam-stiftsplatz-1",
                     "interval": 1}]}), name="stiftsplatz")
        procs.append(agent)
        am = Alertmanager(tmp_path, render_am_config(webhook_only_vars(rx.url)))
        procs.append(am)
        prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"], scrape_interval="5s",
                          rule_files=[str(RULES_DIR / "mogli-recording.yml"), str(RULES_DIR / "mogli-alerts.yml")],
                          alertmanager=f"127.0.0.1:{am.port}")
        procs.append(prom)
        wait_until(lambda: prom.query('mogli_rtp_frames_per_second{camera="cam-stiftsplatz-1"} > 20'), 60,
                   "the camera's frames in Prometheus", interval=1)
        time.sleep(15)  # healthy: nothing pushed
        assert rx.pushes == [], rx.pushes

        t_freeze = time.time()
        cam.frozen.set()
        frozen = wait_until(lambda: rx.alerts("firing", alertname="MogliCameraFrozen"), 45, "frozen push")
        latency = frozen[0][0] - t_freeze
        labels = frozen[0][1]["labels"]
        assert labels["camera"] == "cam-stiftsplatz-1" and labels["node"] == "stiftsplatz"
        assert "Stiftsplatz Nord" in frozen[0][1]["annotations"]["summary_de"]
        assert latency <= PUSH_DEADLINE, latency
        cam.frozen.clear()
        wait_until(lambda: rx.alerts("resolved", alertname="MogliCameraFrozen"), 60, "frozen resolved push")

        t_out = time.time()
        agent.p.send_signal(signal.SIGSTOP)
        silent = wait_until(lambda: rx.alerts("firing", alertname="MogliNodeSilent"), 45, "node-silent push")
        assert silent[0][0] - t_out <= PUSH_DEADLINE
        time.sleep(20)  # long enough for any camera alert to have been pushed
        camera_pushes = [a["labels"]["alertname"] for _, a in rx.alerts("firing")
                         if a["labels"]["alertname"].startswith("MogliCamera")]
        assert camera_pushes == ["MogliCameraFrozen"], camera_pushes  # only the freeze before, nothing new
        print(f"camera frozen push after {latency:.1f} s, node silent after {silent[0][0] - t_out:.1f} s")
    finally:
        for p in procs:
            if getattr(p, "p", None) is not None and p.alive():
                p.p.send_signal(signal.SIGCONT)  # a stopped agent cannot handle SIGTERM
        for p in reversed(procs):
            p.stop()
        cam.close()
        rx.stop()
