"""The five probes through a real agent and collector: every series arrives with the right labels, and
promtool accepts the exposition."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import (
    free_port,
    sample_value,
    scrape,
    start_agent,
    start_collector,
    tool,
    wait_until,
    write_agent_config,
    write_collector_config,
)


@pytest.mark.real
def test_agent_reports_link_and_case_metrics_to_the_collector(tmp_path: Path) -> None:
    port = free_port()
    collector = start_collector(tmp_path, port, write_collector_config(tmp_path, port, {"case1": "s3cret"}))
    agent = None
    try:
        cfg = write_agent_config(tmp_path, "case1", "s3cret", port, {
            "http": [{"target": f"http://127.0.0.1:{port}/healthz", "name": "collector", "interval": 0.5}],
            "interfaces": [{"include": ["lo"], "exclude": [], "interval": 0.5}],
            "system": [{"interval": 1}],
            "uplink": [{"interval": 0.5, "names": {"lo": "loopback"}}],
            "wifi": [{"interval": 0.5}],
        })
        agent = start_agent(tmp_path, cfg)
        labels = {"node": "case1", "site": "testfest"}

        def ready() -> str | None:
            assert agent is not None
            if not agent.alive():
                pytest.fail(agent.output())
            text = scrape(port)
            want = [("mogli_case_uptime_seconds", {}), ("mogli_http_status_code", {}), ("mogli_interface_up", {}),
                    ("mogli_uplink_info", {}), ("mogli_probe_runs_total", {"probe": "wifi"})]
            return text if all(sample_value(text, n, **lb, **labels) is not None for n, lb in want) else None

        text = wait_until(ready, 30, "every probe's metrics on /metrics")
        assert sample_value(text, "mogli_http_status_code", probe="http", target="collector", **labels) == 200
        rx = sample_value(text, "mogli_interface_receive_bytes_total", interface="lo", **labels)
        assert rx is not None and rx > 0
        assert sample_value(text, "mogli_interface_up", interface="lo", **labels) is not None
        assert sample_value(text, "mogli_case_disk_free_bytes", path=str(tmp_path), **labels) is not None
        assert sample_value(text, "mogli_uplink_changes_total", family="ipv4", **labels) == 0
        assert sample_value(text, "mogli_probe_success", probe="wifi", target="wifi", **labels) is not None
        assert sample_value(text, "mogli_uplink_info", family="ipv4", **labels) == 1
        r = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    finally:
        if agent is not None:
            agent.stop()
        collector.stop()
