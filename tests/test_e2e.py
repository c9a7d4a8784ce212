"""End to end with real processes: agent -> collector -> Prometheus, and what an operator sees."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    Prometheus,
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

pytestmark = pytest.mark.real


def test_probe_result_reaches_prometheus_and_metrics_pass_promtool(tmp_path: Path) -> None:
    promtool = tool("promtool")
    port = free_port()
    closed = free_port()  # nothing listens here: a refused target
    tokens = {"stiftsplatz": "tok-stiftsplatz-0123456789abcdef"}
    col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, tokens, stale_after=5))
    agent_cfg = write_agent_config(tmp_path, "stiftsplatz", tokens["stiftsplatz"], port, {
        "tcp": [{"target": f"127.0.0.1:{port}", "name": "collector", "interval": 0.5},
                {"target": f"127.0.0.1:{closed}", "name": "dead-switch", "interval": 0.5}]})
    agent = start_agent(tmp_path, agent_cfg)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
    try:
        up = wait_until(lambda: prom.query('mogli_probe_success{target="collector",node="stiftsplatz"} == 1'),
                        30, "the agent's probe result in Prometheus")
        assert up[0]["metric"]["site"] == "testfest" and up[0]["metric"]["probe"] == "tcp"
        failed = wait_until(lambda: prom.query('mogli_probe_failures_total{target="dead-switch"} > 0'), 30,
                            "the refused target's failures in Prometheus")
        assert failed[0]["metric"]["reason"] == "refused"
        assert prom.query('mogli_agent_up{node="stiftsplatz"}')[0]["value"][1] == "1"

        text = scrape(port)
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0 and lint.stdout.strip() == "" and lint.stderr.strip() == "", lint

        # the agent stops: after stale_after its series leave /metrics and up goes to 0
        agent.stop()
        wait_until(lambda: sample_value(scrape(port), "mogli_agent_up", node="stiftsplatz") == 0, 15,
                   "mogli_agent_up 0 after the agent stopped")
        assert sample_value(scrape(port), "mogli_probe_success", node="stiftsplatz") is None
        # ... and come back, with the same running totals, when it returns
        runs_before = sample_value(text, "mogli_probe_runs_total", target="collector") or 0
        agent = start_agent(tmp_path, agent_cfg, name="agent-again")
        wait_until(lambda: sample_value(scrape(port), "mogli_agent_up", node="stiftsplatz") == 1, 15,
                   "the agent back")
        wait_until(lambda: (sample_value(scrape(port), "mogli_probe_runs_total", target="collector") or 0)
                   > runs_before, 15, "runs_total continuing from the saved total")
        # (the old process's last batch, spooled at shutdown, is delivered first by the new one)
        wait_until(lambda: sample_value(scrape(port), "mogli_agent_restarts_total", node="stiftsplatz") == 1, 15,
                   "the restart counted")
    finally:
        prom.stop()
        agent.stop()
        col.stop()
    for p in (col, agent):
        assert "Traceback" not in p.output(), p.output()


def test_agent_exits_2_on_bad_config_and_token_file(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, "n1", "tok", 9, {})
    (tmp_path / "n1.token").write_text("")
    from helpers import BIN

    r = subprocess.run([str(BIN / "mogli-agent"), "run", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2 and "token file is empty" in r.stderr


def test_sender_keeps_batches_while_collector_is_down(tmp_path: Path) -> None:
    """Nothing is lost: batches measured while the collector is down arrive once it is up."""
    port = free_port()
    tokens = {"n1": "tok-n1-0123456789abcdef"}
    agent_cfg = write_agent_config(tmp_path, "n1", tokens["n1"], port, {
        "tcp": [{"target": f"127.0.0.1:{port}", "name": "collector", "interval": 0.3}]})
    agent = start_agent(tmp_path, agent_cfg)
    try:
        time.sleep(4)  # collector not started yet: every run fails with refused
        col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, tokens))
        try:
            def refused_total() -> float:
                return sample_value(scrape(port), "mogli_probe_failures_total", reason="refused") or 0

            # the refused runs from before the collector existed are delivered, not lost
            total = wait_until(lambda: refused_total() >= 8, 20, "spooled failures delivered")
            assert total
            m = scrape(port)
            assert sample_value(m, "mogli_collector_missing_batches_total", node="n1") == 0
        finally:
            col.stop()
    finally:
        agent.stop()
    assert "Traceback" not in agent.output()


def test_full_spool_drops_oldest_counts_it_and_nothing_else_breaks(tmp_path: Path) -> None:
    port = free_port()
    tokens = {"n1": "tok-n1-0123456789abcdef"}
    probes = {"tcp": [{"target": f"127.0.0.1:{port}", "name": f"t{i}", "interval": 0.2} for i in range(20)]}
    agent_cfg = write_agent_config(tmp_path, "n1", tokens["n1"], port, probes,
                                   spool={"max_bytes": 10_000}, collector={"report_interval": 0.3})
    agent = start_agent(tmp_path, agent_cfg)
    try:
        time.sleep(8)  # collector down: the 10 kB spool overflows
        col = start_collector(tmp_path, port, write_collector_config(tmp_path, port, tokens))
        try:
            def dropped() -> float:
                return sample_value(scrape(port), "mogli_agent_spool_dropped_batches_total", node="n1") or 0

            assert wait_until(lambda: dropped() > 0, 20, "dropped batches reported")
            # the collector saw the gap: the dropped batches are counted as missing, not waited for
            assert wait_until(lambda: (sample_value(scrape(port), "mogli_collector_missing_batches_total",
                                                    node="n1") or 0) > 0, 20, "missing batches counted")
            # ... and live data keeps flowing
            runs = sample_value(scrape(port), "mogli_probe_runs_total", target="t0") or 0
            wait_until(lambda: (sample_value(scrape(port), "mogli_probe_runs_total", target="t0") or 0) > runs + 5,
                       20, "live data after the overflow")
            assert sample_value(scrape(port), "mogli_probe_success", target="t0") == 1
        finally:
            col.stop()
    finally:
        agent.stop()
    assert "Traceback" not in agent.output()
