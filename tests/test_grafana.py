"""The Grafana dashboards: generated reproducibly, structurally sound, and every panel query answered by a real
Prometheus fed by real agents and a real collector (Grafana itself is not installable on these machines).

The real test runs four inventory nodes (two with agents, one that never reports, one described below), two
inventory cameras (one a GStreamer RTSP camera probed by an agent, one never measured), the shipped recording
and alert rules, and a collector with the inventory and remote-write backfill. Then, for every dashboard, it
substitutes every value of every template variable (as Grafana's label_values would list them, plus All) and
runs every panel query: none may fail, and each one must return data for at least one variable value, except
those listed in NEEDS_BRANCH (metrics built on other branches).

What a test machine lacks (a Wi-Fi card, a temperature sensor, a UPS, an uplink that fails over) comes from a
fourth node, "marktplatz", whose reports this test posts itself in the agents' wire format (agent/wire.py) to
the real collector: the panels' queries then meet the real collector's series names and labels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import (
    ROOT,
    Proc,
    Prometheus,
    free_port,
    http_post,
    make_certs,
    need,
    start_agent,
    start_collector,
    tool,
    wait_until,
    write_agent_config,
    write_collector_config,
)
from rtpcam import RtpCamera

from agent import wire

GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
SYSTEM_PYTHON = "/usr/bin/python3"

# Panel queries that cannot have data yet: their metrics come from branches not merged here.
# (dashboard uid, panel title) -> refIds. The lead shrinks this after merging icmp / rtp; the test
# fails when a listed query has data, so the list cannot go stale.
# Queries allowed to come back empty in this run (none: every metric family is fed below).
NEEDS_BRANCH: dict[tuple[str, str], set[str]] = {}
# Passive RTP needs a live capture (AF_PACKET: root). As root (CI) the test feeds a camera's RTP stream
# through a real capture on lo and these panels must have data; otherwise they are allowed to be empty.
NEEDS_ROOT: dict[tuple[str, str], set[str]] = {
    ("mogli-cameras", "Frame rate"): {"A"},
    ("mogli-cameras", "Bitrate"): {"A"},
    ("mogli-cameras", "Loss"): {"A"},
    ("mogli-cameras", "Jitter"): {"A"},
    ("mogli-cameras", "Last frame age"): {"A", "B"},
    ("mogli-cameras", "Stalls (1 h)"): {"A"},
    ("mogli-cameras", "Capture kernel drops"): {"A"},
}
ROOT_CAPTURE = os.geteuid() == 0
ALLOWED_EMPTY = NEEDS_BRANCH if ROOT_CAPTURE else {**NEEDS_BRANCH, **NEEDS_ROOT}
# Values Grafana substitutes itself ($__rate_interval: at least 4 scrape intervals; the test scrapes every 1 s).
BUILTINS = {"__rate_interval": "10s", "__interval": "2s", "__range": "5m"}
LINK_BUILTINS = {"__field", "__url_time_range", "__value", "__data", "__series"}
VAR_RE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?:[.:][^}]*)?\}|([A-Za-z_]\w*))")


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def provisioned_uid() -> str:
    cfg = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "mogli.yml").read_text())
    (ds,) = cfg["datasources"]
    assert ds["type"] == "prometheus"
    return str(ds["uid"])


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


# ------------------------------------------------------------------------------------------ structure


def test_committed_json_is_exactly_what_build_py_generates(tmp_path: Path) -> None:
    build = _load_build()
    assert build.main(["--check"]) == 0, "run: make dashboards"
    # and twice in a row gives the same bytes (no timestamps, no dict-order luck)
    assert build.main(["--out", str(tmp_path / "a")]) == 0 and build.main(["--out", str(tmp_path / "b")]) == 0
    for p in (tmp_path / "a").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes() == (DASHBOARDS / p.name).read_bytes()


def test_check_mode_reports_a_hand_edited_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = _load_build()
    build.main(["--out", str(tmp_path)])
    f = tmp_path / "overview.json"
    f.write_text(f.read_text().replace('"Nodes up"', '"Nodes UP"'))
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    assert "overview.json: differs from grafana/build.py output; run: make dashboards" in capsys.readouterr().err


def test_four_dashboards_with_stable_uids_linked_to_each_other() -> None:
    ds = dashboards()
    uids = {d["uid"] for d in ds.values()}
    assert uids == {"mogli-overview", "mogli-node", "mogli-cameras", "mogli-health"}
    for name, d in ds.items():
        assert d["schemaVersion"] >= 36, name
        assert "mogli" in d["tags"], name
        # the dashboard list link shows every dashboard tagged mogli, keeping time and variables
        assert any(lk["type"] == "dashboards" and lk["tags"] == ["mogli"] and lk["includeVars"] and lk["keepTime"]
                   for lk in d["links"]), name
        # data links point at dashboards that exist
        for path, v in walk(d):
            if isinstance(v, str) and path.endswith(".url") and "/d/" in v:
                m = re.match(r"/d/([\w-]+)/", v)
                assert m and m.group(1) in uids, (name, path, v)
    overview = ds["overview.json"]
    assert any("/d/mogli-node/" in v for p, v in walk(overview) if isinstance(v, str) and p.endswith(".url"))
    assert any("/d/mogli-cameras/" in v for p, v in walk(overview) if isinstance(v, str) and p.endswith(".url"))


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_dashboard_structure(name: str) -> None:
    d = dashboards()[name]
    ps = panels(d)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    titles = [p["title"] for p in ps if p["type"] != "row"]
    assert len(titles) == len(set(titles)), f"duplicate panel titles: {titles}"
    # no two panels overlap, all inside the 24-column grid
    boxes = [(p["title"], p["gridPos"]) for p in ps]
    for t, g in boxes:
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, (t, g)
    for (t1, a), (t2, b) in itertools.combinations(boxes, 2):
        apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                 or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
        assert apart, f"{t1!r} {a} overlaps {t2!r} {b}"
    # every datasource is the provisioned one
    uid = provisioned_uid()
    found = [(p, v) for p, v in walk(d) if p.endswith(".datasource")]
    assert found
    for path, v in found:
        assert v == {"type": "prometheus", "uid": uid}, (path, v)
    # every $variable used is defined (or one Grafana provides)
    defined = {v["name"] for v in d["templating"]["list"]}
    for path, v in walk(d):
        if isinstance(v, str):
            for m in VAR_RE.finditer(v):
                var = m.group(1) or m.group(2)
                ok = var in defined or var in BUILTINS or var in LINK_BUILTINS
                assert ok, f"{path}: ${var} is not a template variable ({sorted(defined)})"
    # every panel has a unit; "none" only where value mappings give the text (states)
    for p in ps:
        if p["type"] == "row":
            assert p["title"], p
            continue
        dflt = p["fieldConfig"]["defaults"]
        assert dflt.get("unit"), f"{p['title']!r} has no unit"
        if dflt["unit"] == "none" and p["type"] != "table":
            assert dflt.get("mappings"), f"{p['title']!r}: unit none without value mappings"
        assert p["targets"], f"{p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), (p["title"], refs)


def test_provisioning_files() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "mogli.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert provisioned_uid() == "mogli-prometheus"
    # the README tells where the dashboards go: the provider's path
    assert provider["options"]["path"] in (ROOT / "README.md").read_text()


def test_every_panel_is_documented() -> None:
    doc = (ROOT / "docs" / "dashboards.md").read_text()
    for name, d in dashboards().items():
        assert f"`{d['uid']}`" in doc, name
        for p in panels(d):
            if p["type"] != "row":
                assert f"| {p['title']}" in doc or f", {p['title']}" in doc, f"{name}: {p['title']!r} not in docs"


def test_variables_are_label_values_queries_in_dependency_order() -> None:
    for name, d in dashboards().items():
        seen: set[str] = set()
        for v in d["templating"]["list"]:
            q = v["query"]["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, (name, q)
            for u in VAR_RE.finditer(q):
                assert (u.group(1) or u.group(2)) in seen, f"{name}: {v['name']} uses a later variable: {q}"
            seen.add(v["name"])


# ------------------------------------------------------------------------------------------ real data

def substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise AssertionError(f"undefined variable ${name} in {text}")
    return VAR_RE.sub(one, text)


def variable_combinations(prom: Prometheus, variables: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every combination of values Grafana would offer (label_values answers, plus All)."""
    combos: list[dict[str, str]] = [{}]
    for v in variables:
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
        assert m
        selector, label = m.groups()
        nxt = []
        for c in combos:
            res = prom.query(f"group by ({label}) ({substitute(selector, c)})")
            options = sorted(r["metric"][label] for r in res if r["metric"].get(label))
            if v.get("includeAll"):
                options.append(v["allValue"])
            nxt.extend({**c, v["name"]: o} for o in options)
        combos = nxt
    return combos


def panel_queries(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query of every panel and annotation."""
    for p in panels(d):
        for t in p.get("targets", []):
            yield p["title"], t["refId"], t["expr"]
    for a in d["annotations"]["list"]:
        yield f"annotation: {a['name']}", "A", a["expr"]


def run_all(prom: Prometheus, start: float) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(dashboard uid, title, refId) -> the longest result over all variable combinations."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    end = time.time()
    for d in dashboards().values():
        combos = variable_combinations(prom, d["templating"]["list"])
        assert combos, f"{d['uid']}: a template variable has no values"
        for title, ref, expr in panel_queries(d):
            key = (d["uid"], title, ref)
            for c in combos:
                q = substitute(expr, c)
                try:
                    res = prom.query_range(q, start, end, 1.0)
                except AssertionError as e:  # pytest.fail: not retried by wait_until
                    pytest.fail(f"query error: {d['uid']} / {title} / {ref} with {c}: {q}\n{e}")
                if len(res) >= len(out.get(key, [])):
                    out[key] = res
    return out


def missing_data(results: dict[tuple[str, str, str], list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
    return [k for k, r in results.items() if not r and k[2] not in ALLOWED_EMPTY.get(k[:2], set())]


def _gst_missing() -> str:
    r = subprocess.run(
        [SYSTEM_PYTHON, "-c",
         "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
         "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
         "print(' '.join(e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if not Gst.ElementFactory.find(e)))"],
        capture_output=True, text=True, timeout=60,
    )
    if r.returncode != 0:
        return "python3-gi / gir1.2-gst-rtsp-server-1.0 missing"
    return f"GStreamer elements missing: {r.stdout.strip()}" if r.stdout.strip() else ""


class Listener:
    """A TCP service on 127.0.0.1 that accepts and closes connections (what a tcp probe checks); with ``ctx``, after
    a TLS handshake (a radio bridge's management port)."""

    def __init__(self, ctx: ssl.SSLContext | None = None) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.ctx is not None:
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # ssl.SSLError is one
                    conn = self.ctx.wrap_socket(conn, server_side=True)
            conn.close()

    def close(self) -> None:
        self.sock.close()


class HardwareReporter:
    """Node "marktplatz": reports what this machine has no hardware for, once a second, like an agent would:
    a Wi-Fi backhaul with a peer, a case temperature, a UPS on mains, and, after fail_over(), an uplink
    failover from fibre to LTE (mogli_uplink_changes_total 0 -> 1: the Node detail annotation)."""

    def __init__(self, port: int, token: str) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/reports"
        self.token = token
        self.lte = threading.Event()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _samples(self, n: int, now: float) -> tuple[wire.Sample, ...]:
        lte = self.lte.is_set()
        values: list[tuple[str, dict[str, str], float]] = [
            ("mogli_wifi_stations", {"interface": "wlan0"}, 1),
            ("mogli_wifi_signal_min_dbm", {"interface": "wlan0"}, -67),
            ("mogli_wifi_signal_avg_dbm", {"interface": "wlan0"}, -61),
            ("mogli_wifi_peer_signal_dbm", {"interface": "wlan0", "peer": "mast-nord"}, -58 - n % 3),
            ("mogli_wifi_peer_tx_bitrate_bytes_per_second", {"interface": "wlan0", "peer": "mast-nord"}, 108e6 / 8),
            ("mogli_wifi_peer_rx_bitrate_bytes_per_second", {"interface": "wlan0", "peer": "mast-nord"}, 72e6 / 8),
            ("mogli_wifi_peer_expected_throughput_bytes_per_second", {"interface": "wlan0", "peer": "mast-nord"},
             60e6 / 8),
            ("mogli_case_temperature_celsius", {"sensor": "cpu"}, 48 + n % 2),
            ("mogli_case_battery_ratio", {}, 0.97),
            ("mogli_case_on_battery", {}, 0),
            ("mogli_case_power_supply_online", {"supply": "AC"}, 1),
            ("mogli_uplink_changes_total", {"family": "ipv4"}, 1 if lte else 0),
            ("mogli_uplink_info", {"family": "ipv4", "interface": "lte0" if lte else "fibre0",
                                   "gateway": "192.0.2.1", "uplink": "lte" if lte else "fibre"}, 1),
        ]
        return tuple(wire.Sample(name, tuple(sorted(lb.items())), v, now) for name, lb, v in values)

    def _run(self) -> None:
        start = time.time()
        n = 0
        while not self._stop.is_set():
            n += 1
            now = time.time()
            body = wire.encode(wire.Report("marktplatz", "testfest", "feedfacecafebeef", n, start,
                                           self._samples(n, now)))
            status, raw = http_post(self.url, body, {
                "Content-Type": wire.CONTENT_TYPE, "Content-Encoding": "gzip",
                "Authorization": f"Bearer {self.token}", wire.SENT_AT_HEADER: f"{now:.3f}"})
            if status != 200:
                self.errors.append(f"{status} {raw[:200]!r}")
            self._stop.wait(1.0)

    def fail_over(self) -> None:
        self.lte.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


INVENTORY = """\
site: {id: testfest, title: "Testfest", lat: 49.4447, lon: 7.7690}
nodes:
  stiftsplatz: {title: "Stiftsplatz", lat: 49.44432, lon: 7.76885, role: edge}
  rathaus: {title: "Rathaus", lat: 49.44353, lon: 7.77118, role: core}
  schillerplatz: {title: "Schillerplatz", lat: 49.44290, lon: 7.76790, role: edge}
  marktplatz: {title: "Marktplatz", lat: 49.44400, lon: 7.76950, role: edge}
cameras:
  cam-stiftsplatz-1: {node: stiftsplatz, title: "Stiftsplatz Nord", lat: 49.4445, lon: 7.7688}
  cam-rathaus-1: {node: rathaus, title: "Rathaus Eingang"}
"""


@pytest.mark.real
@pytest.mark.timeout(240)
def test_every_panel_query_runs_against_real_prometheus_with_real_agents(tmp_path: Path) -> None:
    tool("gst-inspect-1.0")
    why = _gst_missing()
    need(not why, why)
    procs: list[Proc] = []
    listener = Listener()
    certs = make_certs(tmp_path)
    tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ctx.load_cert_chain(certs["short"], certs["short.key"])
    tls_listener = Listener(tls_ctx)
    closed_port = free_port()  # nothing listens: a failing probe and an alert
    prom = None
    hardware: HardwareReporter | None = None
    rtp_cam = RtpCamera() if ROOT_CAPTURE else None  # the same camera's RTP, seen by a live capture on lo
    try:
        cam_port = free_port()
        camera = Proc([SYSTEM_PYTHON, str(ROOT / "tests" / "camera.py"), "--port", str(cam_port), "--fps", "15"],
                      tmp_path / "camera.log")
        procs.append(camera)
        col_port = free_port()
        prom = Prometheus(tmp_path, [f"127.0.0.1:{col_port}"], scrape_interval="1s",
                          rule_files=[str(RULES / "mogli-recording.yml"), str(RULES / "mogli-alerts.yml")],
                          extra_args=["--web.enable-remote-write-receiver"])
        inv = tmp_path / "inventory.yml"
        inv.write_text(INVENTORY)
        tokens = {"stiftsplatz": "tok-stifts", "rathaus": "tok-rathaus", "schillerplatz": "tok-schiller",
                  "marktplatz": "tok-markt"}
        ccfg = write_collector_config(tmp_path, col_port, tokens, inventory=str(inv), stale_after=10,
                                      remote_write={"url": f"{prom.url}/api/v1/write", "late_after": 20})
        common: dict[str, Any] = {
            "interfaces": [{"include": ["lo"], "exclude": [], "interval": 1}],
            "system": [{"interval": 1}],
            "uplink": [{"interval": 1, "names": {"lo": "loopback"}}],
        }
        agents = {
            "stiftsplatz": {**common,
                            "tcp": [{"target": f"127.0.0.1:{listener.port}", "name": "kasse", "interval": 1},
                                    {"target": f"127.0.0.1:{closed_port}", "name": "bar", "interval": 1},
                                    {"target": f"127.0.0.1:{tls_listener.port}", "name": "funkbruecke", "interval": 1,
                                     "tls": True, "tls_verify": False}],
                            "http": [{"target": f"http://127.0.0.1:{col_port}/healthz", "name": "collector",
                                      "interval": 1}],
                            # an uplink gateway and a switch on loopback, pinged as on a real node
                            "icmp": [{"target": "127.0.0.1", "name": "uplink-gw", "interval": 1, "count": 3,
                                      "packet_interval": 0.05, "timeout": 1.5, "reply_timeout": 0.5},
                                     {"target": "127.0.0.2", "name": "switch-buehne", "interval": 1, "count": 3,
                                      "packet_interval": 0.05, "timeout": 1.5, "reply_timeout": 0.5}],
                            "rtsp": [{"target": f"rtsp://127.0.0.1:{cam_port}/cam", "name": "cam-stiftsplatz-1",
                                      "interval": 3, "timeout": 5, "play_seconds": 2, "min_session_gap": 0}],
                            **({"rtp": [{"target": f"127.0.0.1:{rtp_cam.port}", "interface": "lo",
                                         "name": "cam-stiftsplatz-1", "interval": 1}]} if rtp_cam else {})},
            "rathaus": {**common,
                        "tcp": [{"target": f"127.0.0.1:{listener.port}", "name": "kasse", "interval": 1}]},
        }
        # rathaus starts before the collector listens: its first sends fail (send errors, a spool backlog)
        # and it delivers them once the collector is up
        procs.append(start_agent(tmp_path, write_agent_config(tmp_path, "rathaus", tokens["rathaus"], col_port,
                                                              agents.pop("rathaus")), name="rathaus"))
        wait_until(lambda: "failed (connect)" in procs[-1].output() or not procs[-1].alive(), 20, "rathaus send error")
        procs.append(start_collector(tmp_path, col_port, ccfg))
        wait_until(lambda: "READY" in camera.output() or not camera.alive(), 30, "camera READY")
        assert camera.alive(), camera.output()
        for node, probes in agents.items():
            cfg = write_agent_config(tmp_path, node, tokens[node], col_port, probes)
            procs.append(start_agent(tmp_path, cfg, name=node))
        hardware = HardwareReporter(col_port, tokens["marktplatz"])
        t0 = time.time()

        def alive() -> None:
            for p in procs:
                if not p.alive():
                    pytest.fail(f"{p.args[0]} exited:\n{p.output()[-3000:]}")

        # marktplatz fails over once Prometheus has seen its fibre uplink (a counter's first value is no increase)
        wait_until(lambda: prom and prom.query('mogli_uplink_changes_total{node="marktplatz"} == 0'), 30,
                   "marktplatz's uplink counter in Prometheus", interval=0.5)
        hardware.fail_over()

        # the slow parts: a firing alert (hold 5 s, rules every 5 s) and a camera state from the RTSP probe
        def warmed_up() -> bool:
            alive()
            return bool(prom and prom.query('ALERTS{alertstate="firing"}')
                        and prom.query('mogli:camera_state{camera="cam-stiftsplatz-1"}')
                        and prom.query("rate(mogli_collector_reports_total[10s]) > 0"))

        wait_until(warmed_up, 60, "a firing alert and a camera state in Prometheus", interval=1)
        results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

        def all_have_data() -> bool:
            nonlocal results
            alive()
            assert prom is not None
            results = run_all(prom, t0)
            return not missing_data(results)

        try:
            wait_until(all_have_data, 45, "data for every panel", interval=2)
        except AssertionError:
            pytest.fail("panels without data: " + "\n".join(map(str, missing_data(results))))
        n_queries = len(results)
        # the allow-list cannot go stale: once a branch brings the data, the entry has to go
        stale = [k for k, r in results.items() if r and k[2] in ALLOWED_EMPTY.get(k[:2], set())]
        assert not stale, f"these queries have data now: remove them from NEEDS_BRANCH: {stale}"
        assert n_queries > 80, n_queries

        # what the operator sees on the map: every inventory node and camera at its place, coloured
        (geo,) = [p for p in panels(dashboards()["overview.json"]) if p["type"] == "geomap"]
        res = prom.query(substitute(geo["targets"][0]["expr"], {"site": ".*"}))
        where = {(r["metric"]["kind"], r["metric"].get("camera") or r["metric"]["node"]):
                 (float(r["metric"]["lat"]), float(r["metric"]["lon"]), float(r["value"][1])) for r in res}
        nodes = {("node", n) for n in ("stiftsplatz", "rathaus", "schillerplatz", "marktplatz")}
        assert set(where) == nodes | {("camera", "cam-stiftsplatz-1"), ("camera", "cam-rathaus-1")}, where
        assert where[("node", "schillerplatz")] == (49.4429, 7.7679, 2)  # never reported: critical (red)
        assert where[("node", "rathaus")][2] == 0  # healthy: green
        assert where[("camera", "cam-stiftsplatz-1")] == (49.4445, 7.7688, 0)  # plays: OK
        assert where[("camera", "cam-rathaus-1")] == (49.44353, 7.77118, -1)  # not measured: grey, node's place
        # the camera wall's repeat variable lists both cameras; the RTSP figures are the camera's
        walls = variable_combinations(prom, dashboards()["camera-wall.json"]["templating"]["list"])
        assert {c["camera"] for c in walls} == {"cam-stiftsplatz-1", "cam-rathaus-1", ".*"}
        (fps,) = prom.query(substitute(
            'mogli_rtsp_frames_per_second{probe="rtsp", target="$camera", site=~"$site"}',
            {"camera": "cam-stiftsplatz-1", "site": "testfest"}))
        assert float(fps["value"][1]) == pytest.approx(15, rel=0.2)
        assert hardware.errors == []
    finally:
        if hardware is not None:
            hardware.stop()
        for p in reversed(procs):
            p.stop()
        if prom is not None:
            prom.stop()
        listener.close()
        tls_listener.close()
        if rtp_cam is not None:
            rtp_cam.close()
