"""The fast /metrics renderer writes exactly what prometheus-client writes, in both formats."""

from __future__ import annotations

import math
import time

import pytest
from prometheus_client.exposition import choose_encoder

from agent import wire
from collector.exposition import registry_for
from collector.inventory import CameraEntry, Inventory, NodeEntry, SiteEntry
from collector.render import FAST, Renderer
from collector.state import State
from collector.store import Store

T = time.time()


def _state() -> State:
    st = State(Store(":memory:"), stale_after=30)
    hist = wire.Histogram(((0.001, 1.0), (0.01, 5.0), (0.1, 7.0), (math.inf, 8.0)), 0.123456789, 8.0)
    weird = 'quote " backslash \\ newline \n ümlaut'
    for node, site in (("stiftsplatz", "maikerwe-2026"), ("rathaus", "maikerwe-2026"), ("old", "x")):
        samples = (
            wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", weird)), 1.0, T),
            wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "switch")), 0.0, T),
            wire.Sample("mogli_probe_runs_total", (("probe", "tcp"), ("target", "switch")), 1234567.0, T),
            wire.Sample("mogli_probe_duration_seconds", (("probe", "tcp"), ("target", "switch")), 1.5e-05, T),
            wire.Sample("mogli_agent_spool_bytes", (), 123456789012.0, T),
            wire.Sample("mogli_agent_info", (("version", "0.1.0"),), 1.0, T),
        )
        if "mogli_icmp_rtt_seconds" in wire.METRICS:
            samples += (wire.Sample("mogli_icmp_rtt_seconds", (("probe", "icmp"), ("target", "gw")), hist, T),)
        st.apply(wire.Report(node, site, "abcdabcdabcdabcd", 1, T, samples), T - (100 if node == "old" else 0),
                 sent_at=T + 3)
    st.count("applied")
    st.count("bad_request")
    return st


@pytest.mark.parametrize("accept", [
    "",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # what Prometheus 2.42 sends
    "application/openmetrics-text",
])
def test_fast_path_is_byte_identical_to_prometheus_client(accept: str) -> None:
    st = _state()
    inv = Inventory(SiteEntry("maikerwe-2026", "Maikerwe", 49.4, 7.7),
                    {"stiftsplatz": NodeEntry(49.44, 7.76, "Stiftsplatz"), "martin": NodeEntry(49.4, 7.7)},
                    {"cam-1": CameraEntry("stiftsplatz", 'Cam "Nord"')})
    snap = st.snapshot(T + 1)
    encoder, content_type = choose_encoder(accept)
    assert content_type in FAST
    ours = Renderer().render(snap, inv, None, 0, FAST[content_type])
    theirs = encoder(registry_for(lambda _now: snap, inv, None, 0))
    assert ours.decode() == theirs.decode()
    # a second render reuses the cached prefixes and still matches
    r = Renderer()
    r.render(snap, inv, None, 0, FAST[content_type])
    assert r.render(snap, inv, None, 0, FAST[content_type]) == theirs
