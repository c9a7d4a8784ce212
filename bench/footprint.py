"""Agent footprint: resident memory while probing 50 targets and watching 20 cameras."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, start_agent, start_collector, write_agent_config, write_collector_config
from rtpcam import RtpCamera


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _measure(d: Path, cameras: list[RtpCamera] | None, name: str) -> float:
    port = free_port()
    token = "bench-footprint-0123456789abcdef"
    col = start_collector(d, port, write_collector_config(d, port, {name: token}))
    probes: dict[str, Any] = {
        "icmp": [{"target": f"127.1.{i // 250}.{i % 250 + 1}", "name": f"t{i}", "interval": 1, "count": 1,
                  "reply_timeout": 0.5, "timeout": 0.9} for i in range(50)],
    }
    if cameras:
        probes["rtp"] = [{"target": f"127.0.0.1:{c.port}", "interface": "lo", "name": f"cam{i}", "interval": 5}
                         for i, c in enumerate(cameras)]
    agent = start_agent(d, write_agent_config(d, name, token, port, probes), name=name)
    try:
        time.sleep(20)
        samples = []
        for _ in range(5):
            samples.append(_rss_mb(agent.p.pid))
            time.sleep(2)
        assert agent.alive(), agent.output()[-2000:]
        return max(samples)
    finally:
        agent.stop()
        col.stop()


def run() -> list[dict[str, Any]]:
    root = os.geteuid() == 0
    cams = [RtpCamera() for _ in range(20)] if root else None
    try:
        with TemporaryDirectory() as d:
            runs = [_measure(Path(d), cams, f"fp{i}") for i in range(3)]
    finally:
        for c in cams or []:
            c.close()
    watched = "50 ICMP targets at 1/s + 20 RTP cameras (100 packets/s each) captured on lo" if root \
        else "50 ICMP targets at 1/s (not root: no capture)"
    return [{"benchmark": "agent resident memory (peak of 5 readings after 20 s)", "ours": statistics.median(runs),
             "anchor": None, "anchor_name": None, "unit": "MB", "better": "lower",
             "notes": f"{watched}; goal < 50 MB; median of 3 agents"}]


if __name__ == "__main__":
    print(run())
