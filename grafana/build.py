#!/usr/bin/env python3
"""Generate the Grafana dashboards in grafana/dashboards/ (standard library only, no network).

    python3 grafana/build.py            # write the JSON files
    python3 grafana/build.py --check    # exit 1 if a committed file differs from what this script writes

`make dashboards` runs the first; tests/test_grafana.py runs the second. Output is deterministic
(sorted keys, fixed ids and positions), so the same source always gives byte-identical files.

Conventions (docs/dashboards.md):
- every query uses the datasource uid ``mogli-prometheus`` (grafana/provisioning/datasources/mogli.yml);
- template variables: ``site`` (All = ``.*``), ``node``, ``camera``; rates use ``$__rate_interval``;
- every panel has a unit (state panels with value mappings use ``none``);
- state colours: grey = no data yet (-1), green = ok (0), orange = warning / lossy (1), red = critical,
  frozen or down (2, 3) -- the same numbers as the recording rules mogli:node_health and mogli:camera_state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS_UID = "mogli-prometheus"
DS = {"type": "prometheus", "uid": DS_UID}
SCHEMA_VERSION = 39
TAGS = ["mogli"]

UIDS = {
    "overview": "mogli-overview",
    "node": "mogli-node",
    "cameras": "mogli-cameras",
    "health": "mogli-health",
}

Json = dict[str, Any]

# ------------------------------------------------------------------ building blocks


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> Json:
    t: Json = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    else:
        t["range"] = True
    if fmt != "time_series":
        t["format"] = fmt
    return t


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


GREEN_ORANGE_RED = thresholds((None, "grey"), (0, "green"), (1, "orange"), (2, "red"))

NODE_HEALTH_MAPPINGS = [
    {"type": "value", "options": {
        "0": {"text": "OK", "color": "green", "index": 0},
        "1": {"text": "WARNING", "color": "orange", "index": 1},
        "2": {"text": "CRITICAL", "color": "red", "index": 2},
    }},
]
CAMERA_STATE_MAPPINGS = [
    {"type": "value", "options": {
        "-1": {"text": "NO DATA", "color": "grey", "index": 0},
        "0": {"text": "OK", "color": "green", "index": 1},
        "1": {"text": "LOSSY", "color": "orange", "index": 2},
        "2": {"text": "FROZEN", "color": "red", "index": 3},
        "3": {"text": "DOWN", "color": "red", "index": 4},
    }},
]
# the map shows nodes (mogli:node_health 0..2) and cameras (mogli:camera_state 0..3, -1 not measured yet)
MAP_MAPPINGS = [
    {"type": "value", "options": {
        "-1": {"text": "NO DATA", "color": "grey", "index": 0},
        "0": {"text": "OK", "color": "green", "index": 1},
        "1": {"text": "WARNING", "color": "orange", "index": 2},
        "2": {"text": "CRITICAL", "color": "red", "index": 3},
        "3": {"text": "DOWN", "color": "red", "index": 4},
    }},
]
OK_FAIL_MAPPINGS = [
    {"type": "value", "options": {
        "0": {"text": "FAIL", "color": "red", "index": 0},
        "1": {"text": "OK", "color": "green", "index": 1},
    }},
]
UP_DOWN_MAPPINGS = [
    {"type": "value", "options": {
        "0": {"text": "DOWN", "color": "red", "index": 0},
        "1": {"text": "UP", "color": "green", "index": 1},
    }},
]


def _ref(label: str, table: bool) -> str:
    """A data link's reference to a label of the clicked row (table frames) or series (time series)."""
    return f"${{__data.fields.{label}}}" if table else f"${{__field.labels.{label}}}"


def node_link(table: bool) -> Json:
    """To Node detail for the clicked node; the site variable and the time range come along."""
    return {"title": "Node detail",
            "url": f"/d/{UIDS['node']}/node-detail?${{site:queryparam}}&var-node={_ref('node', table)}"
                   "&${__url_time_range}"}


def camera_link(table: bool) -> Json:
    return {"title": "Camera wall",
            "url": f"/d/{UIDS['cameras']}/camera-wall?${{site:queryparam}}&var-camera={_ref('camera', table)}"
                   "&${__url_time_range}"}


# Table columns that data links read (${__data.fields.node}) keep their label name as header.
LINKED_COLUMNS = ("node", "camera")


class Board:
    """Places panels left to right, wrapping at 24 columns; a row() starts a new line."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self._x = 0
        self._y = 0
        self._next_id = 1

    def _newline(self) -> None:
        """Continue below everything placed so far."""
        self._y = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in self.panels), default=0)
        self._x = 0

    def row(self, title: str, repeat: str = "") -> None:
        self._newline()
        p: Json = {"type": "row", "title": title, "id": self._next_id, "collapsed": False, "panels": [],
                   "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1}}
        if repeat:
            p["repeat"] = repeat
        self._next_id += 1
        self.panels.append(p)
        self._newline()

    def add(self, kind: str, title: str, targets: list[Json], unit: str, w: int = 8, h: int = 8,
            description: str = "", mappings: list[Json] | None = None, steps: Json | None = None,
            links: list[Json] | None = None, options: Json | None = None, custom: Json | None = None,
            transformations: list[Json] | None = None, extra: Json | None = None,
            min_: float | None = None, max_: float | None = None, no_value: str = "",
            at: tuple[int, int] | None = None) -> Json:
        """Add a panel at the cursor (wrapping at 24 columns), or at ``at`` = (x, y) for hand-made layouts."""
        if at is None and self._x + w > 24:
            self._newline()
        x, y = at if at is not None else (self._x, self._y)
        defaults: Json = {"unit": unit}
        if mappings:
            defaults["mappings"] = mappings
        if steps:
            defaults["thresholds"] = steps
            defaults["color"] = {"mode": "thresholds"}
        if links:
            defaults["links"] = links
        if custom:
            defaults["custom"] = custom
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        if no_value:
            defaults["noValue"] = no_value
        p: Json = {
            "id": self._next_id, "type": kind, "title": title, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
        }
        if description:
            p["description"] = description
        if transformations:
            p["transformations"] = transformations
        if extra:
            p.update(extra)
        self._next_id += 1
        self.panels.append(p)
        if at is None:
            self._x += w
        else:
            self._x = 24  # the next flowing panel starts below everything
        return p

    # shorthands ----------------------------------------------------------
    def timeseries(self, title: str, targets: list[Json], unit: str, **kw: Any) -> Json:
        kw.setdefault("options", {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                  "tooltip": {"mode": "multi", "sort": "desc"}})
        return self.add("timeseries", title, targets, unit, **kw)

    def stat(self, title: str, targets: list[Json], unit: str, **kw: Any) -> Json:
        kw.setdefault("options", {"colorMode": "background", "graphMode": "none", "justifyMode": "auto",
                                  "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                  "textMode": "auto", "orientation": "auto"})
        return self.add("stat", title, targets, unit, **kw)

    def states(self, title: str, targets: list[Json], mappings: list[Json], **kw: Any) -> Json:
        kw.setdefault("options", {"showValue": "auto", "mergeValues": True, "rowHeight": 0.8,
                                  "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
                                  "tooltip": {"mode": "single", "sort": "none"}})
        kw.setdefault("steps", GREEN_ORANGE_RED)
        return self.add("state-timeline", title, targets, "none", mappings=mappings, **kw)

    def table(self, title: str, targets: list[Json], unit: str, columns: dict[str, str], **kw: Any) -> Json:
        """An instant table; ``columns`` maps label -> header, in display order (others hidden)."""
        order = {name: i for i, name in enumerate(columns)}
        columns = {k: v for k, v in columns.items() if k not in LINKED_COLUMNS}
        kw.setdefault("transformations", [
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
                "indexByName": order, "renameByName": columns, "includeByName": dict.fromkeys(order, True)}},
        ])
        kw.setdefault("options", {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}})
        return self.add("table", title, targets, unit, **kw)


def variable(name: str, label: str, query: str, multi: bool = False, include_all: bool = False) -> Json:
    v: Json = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": f"var-{name}"},
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all, "current": {},
        "hide": 0, "options": [], "regex": "",
    }
    if include_all:
        v["allValue"] = ".*"
    return v


SITE_VAR = variable("site", "Site", "label_values(mogli_agent_up, site)", include_all=True)


def dashboard(key: str, title: str, description: str, board: Board, variables: list[Json],
              annotations: list[Json] | None = None, time_from: str = "now-1h") -> Json:
    return {
        "uid": UIDS[key], "title": title, "description": description, "tags": TAGS,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "refresh": "10s", "time": {"from": time_from, "to": "now"}, "timezone": "browser",
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "templating": {"list": variables},
        "annotations": {"list": annotations or []},
        "links": [{"title": "mogli dashboards", "type": "dashboards", "tags": TAGS, "asDropdown": False,
                   "includeVars": True, "keepTime": True, "targetBlank": False, "icon": "external link",
                   "tooltip": "", "url": ""}],
        "panels": board.panels,
    }


# ------------------------------------------------------------------ 1. festival overview

S = 'site=~"$site"'


def overview() -> Json:
    b = Board()
    b.stat("Nodes up", [
        target(f"sum(mogli_agent_up{{{S}}})", "up", "A"),
        target(f"count(mogli_agent_up{{{S}}})", "known", "B"),
    ], "short", w=4, h=5, no_value="0",
        description="Agents that reported within the collector's stale time, and all nodes known "
                    "(inventory plus any agent that reported).")
    b.stat("Cameras OK", [
        target(f"count(mogli:camera_state{{{S}}} == 0)", "ok", "A"),
        target(f"count(mogli_camera_info{{{S}}})", "in inventory", "B"),
    ], "short", w=4, h=5, no_value="0",
        description="Cameras whose state (mogli:camera_state) is OK, and cameras in the inventory.")
    b.stat("Firing alerts", [
        target('count(ALERTS{alertstate="firing", severity="critical", site=~"$site|"})', "critical", "A"),
        target('count(ALERTS{alertstate="firing", severity="warning", site=~"$site|"})', "warning", "B"),
    ], "short", w=4, h=5, no_value="0", steps=thresholds((None, "green"), (1, "red")))
    b.states("Node health", [
        target(f"mogli:node_health{{{S}}} * on (node, site) group_left (title) mogli:node_place:info",
               "{{title}}"),
    ], NODE_HEALTH_MAPPINGS, w=12, h=5, links=[node_link(False)])
    b.table("Active alerts", [
        target('ALERTS{alertstate="firing", site=~"$site|"}', ref="A", instant=True, fmt="table"),
    ], "none", {"severity": "Severity", "alertname": "Alert", "node": "Node", "title": "Place",
                "target": "Target", "camera": "Camera", "site": "Site"}, w=12, h=9, at=(12, 5),
        links=[node_link(True)],
        description="Every firing mogli alert (docs/alerts.md); alerts without a site (collector down) "
                    "are always shown. Click a node for its detail dashboard.")
    b.add("geomap", "Festival map", [
        target(
            f'label_replace(mogli_node_info{{{S}}} * on (node, site) group_left () mogli:node_health,'
            f' "kind", "node", "", "")'
            f' or label_replace((mogli_camera_info{{{S}}} * on (camera, site) group_left () mogli:camera_state)'
            f' or (mogli_camera_info{{{S}}} - 2), "kind", "camera", "", "")',
            ref="A", instant=True, fmt="table"),
    ], "none", w=12, h=18, at=(0, 5), mappings=MAP_MAPPINGS, steps=GREEN_ORANGE_RED,
        links=[node_link(True), camera_link(True)],
        description="Nodes (cases) and cameras at their inventory coordinates. Colour: green OK, orange "
                    "warning / lossy, red critical / frozen / down, grey no data yet. A node is red while "
                    "it is silent or a critical alert about it (or one of its cameras) fires.",
        transformations=[{"id": "convertFieldType", "options": {"fields": {}, "conversions": [
            {"targetField": "lat", "destinationType": "number"},
            {"targetField": "lon", "destinationType": "number"}]}}],
        options={
            "view": {"id": "fit", "allLayers": True, "lat": 0, "lon": 0, "zoom": 15},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap", "config": {}},
            "tooltip": {"mode": "details"},
            "layers": [{
                "type": "markers", "name": "Nodes and cameras", "tooltip": True,
                "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                "config": {
                    "showLegend": True,
                    "style": {
                        "size": {"fixed": 12}, "opacity": 0.9,
                        "color": {"field": "Value", "fixed": "grey"},
                        "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                        "text": {"mode": "field", "field": "title", "fixed": ""},
                        "textConfig": {"fontSize": 12, "offsetY": -16, "textAlign": "center",
                                       "textBaseline": "bottom"},
                    },
                },
            }],
        })
    b.table("Uplink per node", [
        target(f"mogli_uplink_info{{{S}}} * on (node, site) group_left (title) mogli:node_place:info",
               ref="A", instant=True, fmt="table"),
    ], "none", {"title": "Place", "node": "Node", "family": "Family", "uplink": "Uplink",
                "interface": "Interface", "gateway": "Gateway"}, w=12, h=9, at=(12, 14), links=[node_link(True)],
        description="The default route each node uses now (mogli_uplink_info); the Node detail dashboard marks "
                    "every change.")
    b.table("Worst links (ping loss, 1 min)", [
        target(f"topk(10, mogli:icmp_loss_ratio:1m{{{S}}})", ref="A", instant=True, fmt="table"),
    ], "percentunit", {"node": "Node", "target": "Target", "Value": "Loss"}, w=8, h=8, links=[node_link(True)],
        steps=thresholds((None, "green"), (0.02, "orange"), (0.1, "red")),
        custom={"cellOptions": {"type": "color-text"}})
    b.table("Slowest uplinks (ping RTT, 1 min)", [
        target(f"topk(10, mogli:uplink_rtt_seconds:avg1m{{{S}}})", ref="A", instant=True, fmt="table"),
    ], "s", {"node": "Node", "Value": "RTT"}, w=8, h=8, links=[node_link(True)],
        steps=thresholds((None, "green"), (0.05, "orange"), (0.15, "red")),
        custom={"cellOptions": {"type": "color-text"}})
    b.table("Failing probes", [
        target(f"mogli_probe_success{{{S}}} == 0", ref="A", instant=True, fmt="table"),
    ], "none", {"node": "Node", "probe": "Probe", "target": "Target"}, w=8, h=8, links=[node_link(True)],
        description="Probes whose last run failed (any kind: tcp, http, rtsp, icmp, ...).")
    return dashboard("overview", "mogli: Festival overview",
                     "Is everything green? Map, counts, alerts, uplinks and the worst links of the event.",
                     b, [SITE_VAR], time_from="now-30m")


# ------------------------------------------------------------------ 2. node detail

N = 'node="$node", site=~"$site"'


def node_detail() -> Json:
    b = Board()
    b.stat("Agent", [target(f"mogli_agent_up{{{N}}}", ref="A")], "none", w=4, h=4, mappings=UP_DOWN_MAPPINGS,
           steps=thresholds((None, "red"), (1, "green")))
    b.stat("Health", [target(f"mogli:node_health{{{N}}}", ref="A")], "none", w=4, h=4,
           mappings=NODE_HEALTH_MAPPINGS, steps=GREEN_ORANGE_RED)
    b.stat("Last report", [target(f"time() - mogli_agent_last_report_timestamp_seconds{{{N}}}", ref="A")],
           "s", w=4, h=4, steps=thresholds((None, "green"), (6, "orange"), (12, "red")))
    b.stat("Clock offset now", [target(f"mogli_agent_clock_offset_seconds{{{N}}}", ref="A")], "s", w=4, h=4,
           description="Agent clock minus collector clock; beyond max_clock_offset the collector corrects "
                       "the node's timestamps.")
    b.table("Active uplink", [
        target(f"mogli_uplink_info{{{N}}}", ref="A", instant=True, fmt="table"),
    ], "none", {"family": "Family", "uplink": "Uplink", "interface": "Interface", "gateway": "Gateway"},
        w=8, h=4)

    b.row("Targets")
    b.states("Probe results", [
        target(f"mogli_probe_success{{{N}}}", "{{probe}} {{target}}"),
    ], OK_FAIL_MAPPINGS, w=24, h=6, steps=thresholds((None, "red"), (1, "green")))
    b.timeseries("Ping RTT per target", [
        target(f"mogli:icmp_rtt_seconds:avg1m{{{N}}}", "{{target}} (1 min avg)", "A"),
        target(f"mogli_icmp_rtt_avg_seconds{{{N}}}", "{{target}} (last run)", "B"),
    ], "s", w=8)
    b.timeseries("Ping loss per target", [
        target(f"mogli:icmp_loss_ratio:1m{{{N}}}", "{{target}} (1 min)", "A"),
        target(f"mogli_icmp_loss_ratio{{{N}}}", "{{target}} (last run)", "B"),
    ], "percentunit", w=8, min_=0, max_=1)
    b.timeseries("Ping jitter per target", [
        target(f"mogli_icmp_jitter_seconds{{{N}}}", "{{target}}", "A"),
    ], "s", w=8)
    b.add("heatmap", "Ping RTT distribution", [
        target(f"sum by (le) (increase(mogli_icmp_rtt_seconds_bucket{{{N}}}[$__rate_interval]))", "{{le}}", "A",
               fmt="heatmap"),
    ], "s", w=24, h=8, description="Round trips of all ping targets of the node per RTT bucket: a second band "
                                   "appears when part of the traffic takes a slower path.",
        options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1, "color": {"mode": "scheme",
                 "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange"},
                 "tooltip": {"show": True, "yHistogram": True}, "legend": {"show": True},
                 "rowsFrame": {"layout": "auto"}, "filterValues": {"le": 1e-9}})
    b.timeseries("Probe duration per target", [
        target(f'mogli_probe_duration_seconds{{{N}, probe!="icmp"}}', "{{probe}} {{target}}", "A"),
    ], "s", w=12, description="Wall time of the last tcp / http / rtsp run (connect + answer).")
    b.timeseries("Probe failures by reason", [
        target(f"sum by (probe, target, reason) (increase(mogli_probe_failures_total{{{N}}}[$__rate_interval]))",
               "{{probe}} {{target}}: {{reason}}", "A"),
    ], "short", w=12, custom={"drawStyle": "bars", "fillOpacity": 80})
    b.timeseries("Probe phases", [
        target(f"mogli_probe_phase_seconds{{{N}}}", "{{probe}} {{target}}: {{phase}}", "A"),
    ], "s", w=12, description="Where a tcp / http / rtsp run spends its time: resolve, connect, TLS handshake, "
                              "first byte (rtsp: connect, describe). A phase that stops being reported is where "
                              "failing runs get stuck.")
    certs = b.table("TLS certificates", [
        target(f"(mogli_tls_cert_expiry_timestamp_seconds{{{N}}} - time()) / 86400", ref="A", instant=True,
               fmt="table"),
    ], "none", {"probe": "Probe", "target": "Target", "Value": "Days left"}, w=12,
        steps=thresholds((None, "red"), (7, "orange"), (14, "green")), custom={"cellOptions": {"type": "color-text"}},
        description="Days until the certificate of each https target and tcp target with tls: true runs out "
                    "(MogliCertExpiring mails under 14).")
    certs["fieldConfig"]["defaults"]["decimals"] = 1

    b.row("Interfaces")
    b.timeseries("Interface throughput", [
        target(f"rate(mogli_interface_receive_bytes_total{{{N}}}[$__rate_interval]) * 8", "{{interface}} in",
               "A"),
        target(f"rate(mogli_interface_transmit_bytes_total{{{N}}}[$__rate_interval]) * 8", "{{interface}} out",
               "B"),
    ], "bps", w=12)
    b.timeseries("Interface errors and drops", [
        target(f"rate(mogli_interface_receive_errors_total{{{N}}}[$__rate_interval])", "{{interface}} rx errors",
               "A"),
        target(f"rate(mogli_interface_transmit_errors_total{{{N}}}[$__rate_interval])",
               "{{interface}} tx errors", "B"),
        target(f"rate(mogli_interface_receive_drops_total{{{N}}}[$__rate_interval])", "{{interface}} rx drops",
               "C"),
        target(f"rate(mogli_interface_transmit_drops_total{{{N}}}[$__rate_interval])", "{{interface}} tx drops",
               "D"),
    ], "pps", w=12)
    b.states("Interface link", [
        target(f"mogli_interface_carrier{{{N}}}", "{{interface}}"),
    ], UP_DOWN_MAPPINGS, w=12, h=6, steps=thresholds((None, "red"), (1, "green")))
    b.timeseries("Carrier changes", [
        target(f"increase(mogli_interface_carrier_changes_total{{{N}}}[$__rate_interval])", "{{interface}}", "A"),
    ], "short", w=12, h=6, description="Link up/down transitions: a flapping cable or radio.")

    b.row("Wi-Fi")
    b.timeseries("Wi-Fi signal", [
        target(f"mogli_wifi_signal_min_dbm{{{N}}}", "{{interface}} weakest", "A"),
        target(f"mogli_wifi_signal_avg_dbm{{{N}}}", "{{interface}} mean", "B"),
        target(f"mogli_wifi_peer_signal_dbm{{{N}}}", "{{interface}} {{peer}}", "C"),
    ], "dBm", w=8)
    b.timeseries("Wi-Fi peer bitrates", [
        target(f"mogli_wifi_peer_tx_bitrate_bytes_per_second{{{N}}} * 8", "{{peer}} tx", "A"),
        target(f"mogli_wifi_peer_rx_bitrate_bytes_per_second{{{N}}} * 8", "{{peer}} rx", "B"),
        target(f"mogli_wifi_peer_expected_throughput_bytes_per_second{{{N}}} * 8", "{{peer}} expected", "C"),
    ], "bps", w=8)
    b.timeseries("Wi-Fi stations", [
        target(f"mogli_wifi_stations{{{N}}}", "{{interface}}", "A"),
    ], "short", w=8)

    b.row("Uplink")
    b.states("Uplink in use", [
        target(f"mogli_uplink_info{{{N}}}", "{{family}} {{uplink}} ({{interface}} via {{gateway}})"),
    ], [{"type": "value", "options": {"1": {"text": "in use", "color": "green", "index": 0}}}], w=12, h=6,
        steps=thresholds((None, "green")),
        description="Which default route carries the traffic; the dashboard annotation marks every change "
                    "(mogli_uplink_changes_total).")
    b.timeseries("Uplink quality (best uplink target)", [
        target(f"mogli:uplink_rtt_seconds:avg1m{{{N}}}", "RTT", "A"),
    ], "s", w=6, h=6)
    b.timeseries("Uplink loss (best uplink target)", [
        target(f"mogli:uplink_loss_ratio:1m{{{N}}}", "loss", "A"),
    ], "percentunit", w=6, h=6, min_=0, max_=1)

    b.row("Case")
    b.timeseries("Case temperature", [
        target(f"mogli_case_temperature_celsius{{{N}}}", "{{sensor}}", "A"),
    ], "celsius", w=8)
    b.timeseries("Power", [
        target(f"mogli_case_battery_ratio{{{N}}}", "battery", "A"),
        target(f"mogli_case_on_battery{{{N}}}", "on battery", "B"),
        target(f"mogli_case_power_supply_online{{{N}}}", "{{supply}} online", "C"),
    ], "percentunit", w=8, min_=0, max_=1,
        description="Battery charge (0..100 %); 'on battery' and 'online' are 0/1 (shown as 0 % / 100 %).")
    b.timeseries("Load", [
        target(f"mogli_case_load1{{{N}}}", "1 min", "A"),
        target(f"mogli_case_load5{{{N}}}", "5 min", "B"),
    ], "short", w=8)
    b.timeseries("Memory available", [
        target(f"mogli_case_memory_available_bytes{{{N}}} / mogli_case_memory_total_bytes{{{N}}}", "available", "A"),
    ], "percentunit", w=8, min_=0, max_=1)
    b.timeseries("Uptime", [
        target(f"mogli_case_uptime_seconds{{{N}}}", "uptime", "A"),
    ], "s", w=8, description="Time since the router booted: a drop to 0 is a reboot (power loss?).")
    b.timeseries("Disk free", [
        target(f"mogli_case_disk_free_bytes{{{N}}}", "{{path}}", "A"),
    ], "bytes", w=8)

    b.row("Agent")
    b.timeseries("Spool backlog", [
        target(f"mogli_agent_spool_batches{{{N}}}", "batches", "A"),
    ], "short", w=8, description="Batches waiting on the node's disk: grows while the collector is unreachable.")
    b.timeseries("Spool oldest batch age", [
        target(f"mogli_agent_spool_oldest_age_seconds{{{N}}}", "oldest batch", "A"),
    ], "s", w=8)
    b.timeseries("Clock offset", [
        target(f"mogli_agent_clock_offset_seconds{{{N}}}", "offset", "A"),
    ], "s", w=8)
    failover = {
        "name": "Uplink failover", "enable": True, "iconColor": "orange", "datasource": DS,
        "expr": f"increase(mogli_uplink_changes_total{{{N}}}[$__rate_interval]) > 0",
        "step": "10s", "titleFormat": "Uplink changed ({{family}})",
        "textFormat": "The default route of {{node}} changed", "tagKeys": "node,family", "useValueForTime": False,
    }
    node_var = variable("node", "Node", 'label_values(mogli_agent_up{site=~"$site"}, node)')
    return dashboard("node", "mogli: Node detail",
                     "One case: its targets, interfaces, Wi-Fi, uplink (with failover marks), case health, "
                     "spool and clock.", b, [SITE_VAR, node_var], annotations=[failover])


# ------------------------------------------------------------------ 3. camera wall

C = 'camera="$camera", site=~"$site"'
CT = 'probe="rtsp", target="$camera", site=~"$site"'


def camera_wall() -> Json:
    b = Board()
    b.states("All cameras", [
        target(f"mogli:camera_state{{{S}}}", "{{title}}"),
    ], CAMERA_STATE_MAPPINGS, w=24, h=7, links=[camera_link(False)],
        description="0 OK, 1 lossy (> 2 % RTP loss), 2 frozen (packets but no new frames, or 3 stalls a "
                    "minute), 3 down (no packets for 3 s or the RTSP probe fails): mogli:camera_state.")
    b.row("$camera", repeat="camera")
    b.stat("State", [target(f"mogli:camera_state{{{C}}}", ref="A")], "none", w=3, h=5,
           mappings=CAMERA_STATE_MAPPINGS, steps=GREEN_ORANGE_RED)
    b.stat("RTSP result", [
        target(f"mogli_probe_success{{{CT}}}", "probe", "A"),
        target(f"mogli_rtsp_status_code{{{CT}}}", "status", "B"),
    ], "none", w=3, h=5, mappings=OK_FAIL_MAPPINGS, steps=thresholds((None, "red"), (1, "green")),
        description="Last RTSP probe run: OK/FAIL and the camera's RTSP status code (the reason is on the "
                    "Node detail dashboard, Probe failures by reason).")
    b.timeseries("Frame rate", [
        target(f"mogli_rtp_frames_per_second{{{C}}}", "stream", "A"),
        target(f"mogli_rtsp_frames_per_second{{{CT}}}", "probe", "B"),
    ], "suffix: fps", w=3, h=5, min_=0)
    b.timeseries("Bitrate", [
        target(f"mogli_rtp_bitrate_bytes_per_second{{{C}}} * 8", "stream", "A"),
        target(f"mogli_rtsp_bitrate_bytes_per_second{{{CT}}} * 8", "probe", "B"),
    ], "bps", w=3, h=5, min_=0)
    b.timeseries("Loss", [
        target(f"mogli:camera_loss_ratio:1m{{{C}}}", "stream", "A"),
        target(f"increase(mogli_rtsp_rtp_lost_packets_total{{{CT}}}[5m]) / (increase(mogli_rtsp_rtp_packets_total"
               f"{{{CT}}}[5m]) + increase(mogli_rtsp_rtp_lost_packets_total{{{CT}}}[5m]))", "probe", "B"),
    ], "percentunit", w=3, h=5, min_=0)
    b.timeseries("Jitter", [
        target(f"mogli_rtp_jitter_seconds{{{C}}}", "stream", "A"),
        target(f"mogli_rtsp_jitter_seconds{{{CT}}}", "probe", "B"),
    ], "s", w=3, h=5, min_=0)
    b.timeseries("Last frame age", [
        target(f"mogli_rtp_last_frame_age_seconds{{{C}}}", "frame", "A"),
        target(f"mogli_rtp_last_packet_age_seconds{{{C}}}", "packet", "B"),
    ], "s", w=3, h=5, min_=0, steps=thresholds((None, "green"), (3, "red")),
        custom={"thresholdsStyle": {"mode": "line"}})
    b.stat("Stalls (1 h)", [
        target(f"increase(mogli_rtp_stalls_total{{{C}}}[1h])", ref="A"),
    ], "short", w=3, h=5, steps=thresholds((None, "green"), (1, "orange"), (3, "red")), no_value="0")
    b.row("Capture")
    b.timeseries("Capture kernel drops", [
        target(f"rate(mogli_capture_kernel_drops_total{{{S}}}[$__rate_interval])", "{{node}} {{interface}}", "A"),
    ], "pps", w=24, h=6,
        description="Packets the kernel dropped before the passive RTP capture saw them: the stream figures "
                    "above undercount while this is above 0.")
    cam_var = variable("camera", "Camera", 'label_values(mogli:camera_place:info{site=~"$site"}, camera)',
                       multi=True, include_all=True)
    return dashboard("cameras", "mogli: Camera wall",
                     "One row per camera: state, frame rate, bitrate, loss, jitter, last-frame age, stalls and "
                     "the RTSP probe's result.", b, [SITE_VAR, cam_var], time_from="now-30m")


# ------------------------------------------------------------------ 4. monitoring health

NM = 'node=~"$node", site=~"$site"'


def monitoring_health() -> Json:
    b = Board()
    b.stat("Agents reporting", [
        target(f"sum(mogli_agent_up{{{NM}}})", "up", "A"),
        target(f"count(mogli_agent_up{{{NM}}})", "known", "B"),
    ], "short", w=6, h=5, no_value="0")
    b.stat("Scrape of the collector", [
        target('up{job="mogli"}', "{{instance}}", "A"),
    ], "none", w=6, h=5, mappings=UP_DOWN_MAPPINGS, steps=thresholds((None, "red"), (1, "green")))
    b.stat("Backfill pending", [
        target("sum(mogli_collector_remote_write_pending_samples)", "pending", "A"),
    ], "short", w=6, h=5, steps=thresholds((None, "green"), (10000, "orange")),
        description="Late samples stored by the collector and not yet written to Prometheus.")
    b.stat("Collector version", [
        target("mogli_collector_info", "{{version}}", "A"),
    ], "none", w=6, h=5, mappings=[{"type": "value", "options": {"1": {"text": "running", "index": 0}}}],
        options={"colorMode": "none", "graphMode": "none", "textMode": "value_and_name",
                                   "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                   "justifyMode": "auto", "orientation": "auto"})
    b.states("Agents", [
        target(f"mogli_agent_up{{{NM}}}", "{{node}}"),
    ], UP_DOWN_MAPPINGS, w=12, h=8, steps=thresholds((None, "red"), (1, "green")), links=[node_link(False)])
    b.timeseries("Time since last report", [
        target(f"time() - mogli_agent_last_report_timestamp_seconds{{{NM}}}", "{{node}}", "A"),
    ], "s", w=12, h=8, steps=thresholds((None, "green"), (12, "red")), custom={"thresholdsStyle": {"mode": "line"}})

    b.row("Collector")
    b.timeseries("Reports by result", [
        target("sum by (result) (rate(mogli_collector_reports_total[$__rate_interval]))", "{{result}}", "A"),
    ], "reqps", w=8, description="applied = new batch; duplicate = a replayed batch acknowledged again; "
                                 "bad_request / unauthorized / throttled = rejected.")
    b.timeseries("Samples ingested", [
        target("rate(mogli_collector_samples_total[$__rate_interval])", "samples", "A"),
    ], "cps", w=8)
    b.timeseries("Scrape duration", [
        target('scrape_duration_seconds{job="mogli"}', "{{instance}}", "A"),
    ], "s", w=8, description="How long Prometheus takes to scrape the collector's /metrics.")
    b.timeseries("Batches duplicated and missing", [
        target(f"increase(mogli_collector_duplicate_batches_total{{{NM}}}[$__rate_interval])", "{{node}} duplicate",
               "A"),
        target(f"increase(mogli_collector_missing_batches_total{{{NM}}}[$__rate_interval])", "{{node}} missing",
               "B"),
    ], "short", w=12, description="missing = batches the agent dropped from a full spool: data lost for good.")
    b.timeseries("Agent restarts", [
        target(f"increase(mogli_agent_restarts_total{{{NM}}}[$__rate_interval])", "{{node}}", "A"),
    ], "short", w=12)

    b.row("Backfill (remote write)")
    b.timeseries("Late samples", [
        target(f"rate(mogli_collector_late_samples_total{{{NM}}}[$__rate_interval])", "{{node}}", "A"),
    ], "cps", w=8, description="Samples that arrived later than remote_write.late_after (replayed spools).")
    b.timeseries("Remote-write requests", [
        target("sum by (outcome) (rate(mogli_collector_remote_write_requests_total[$__rate_interval]))",
               "{{outcome}}", "A"),
    ], "reqps", w=8)
    b.timeseries("Backfilled samples", [
        target("rate(mogli_collector_remote_write_samples_total[$__rate_interval])", "written", "A"),
        target("mogli_collector_remote_write_pending_samples", "pending", "B"),
    ], "short", w=8)

    b.row("Agents")
    b.timeseries("Spool backlog per node", [
        target(f"mogli_agent_spool_batches{{{NM}}}", "{{node}}", "A"),
    ], "short", w=8)
    b.timeseries("Send errors", [
        target(f"sum by (node, reason) (increase(mogli_agent_send_errors_total{{{NM}}}[$__rate_interval]))",
               "{{node}} {{reason}}", "A"),
    ], "short", w=8)
    b.timeseries("Clock offset per node", [
        target(f"mogli_agent_clock_offset_seconds{{{NM}}}", "{{node}}", "A"),
    ], "s", w=8)
    node_var = variable("node", "Node", 'label_values(mogli_agent_up{site=~"$site"}, node)', multi=True,
                        include_all=True)
    return dashboard("health", "mogli: Monitoring health",
                     "Is the monitoring itself working? Agents reporting, collector ingest, scrapes, backfill.",
                     b, [SITE_VAR, node_var])


# ------------------------------------------------------------------ output

def build() -> dict[str, str]:
    """File name -> exact file content."""
    boards = {"overview.json": overview(), "node-detail.json": node_detail(),
              "camera-wall.json": camera_wall(), "monitoring-health.json": monitoring_health()}
    return {name: json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n" for name, d in boards.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    a = ap.parse_args(argv)
    files = build()
    if a.check:
        stale = [n for n, text in files.items()
                 if not (a.out / n).is_file() or (a.out / n).read_text(encoding="utf-8") != text]
        extra = sorted(p.name for p in a.out.glob("*.json") if p.name not in files)
        for n in stale:
            print(f"{a.out / n}: differs from grafana/build.py output; run: make dashboards", file=sys.stderr)
        for n in extra:
            print(f"{a.out / n}: not generated by grafana/build.py; remove it", file=sys.stderr)
        return 1 if stale or extra else 0
    a.out.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (a.out / n).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
