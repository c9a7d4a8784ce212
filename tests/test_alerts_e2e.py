"""End to end, real processes: agents -> collector -> Prometheus (shipped rules) -> Alertmanager (rendered
template) -> webhook receiver standing in for the staff phone.

A healthy period with two 5-second blips (an agent frozen for 5 s, the probed service refusing for 5 s)
pushes nothing; then a node outage (agent SIGSTOPped) and a probe target going down each push once
within 30 s, and push "resolved" after recovery. The measured latencies are printed (run with -s) and
written to e2e-latency.json in the test's tmp dir; bench/alert_latency.py measures them over several runs.

The issue asks for a 2-minute healthy period; CI uses 35 s (blips included) to stay within the suite's
time budget. MOGLI_E2E_HEALTHY_SECONDS=120 runs the full 2 minutes.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alerting import AlertStack
from helpers import wait_until

HEALTHY_SECONDS = float(os.environ.get("MOGLI_E2E_HEALTHY_SECONDS", "35"))
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
@pytest.mark.skip(reason="needs RTP live capture from branch rtp")
def test_camera_freeze_pushes_and_node_outage_does_not_push_its_cameras() -> None:
    """TODO(lead, after merging branch rtp): an agent with a live RTP capture of an ffmpeg/GStreamer camera;
    freeze the picture (keep packets flowing) -> MogliCameraFrozen push within 30 s, resolved after the
    picture moves again; then SIGSTOP that agent -> MogliNodeSilent only, no camera push (camera alerts
    wait while their node is silent, and Alertmanager inhibits them: tests/test_alertmanager.py)."""
