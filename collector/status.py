"""Node and camera states for incident staff: JSON at /api/v1/status, a phone page at /.

States are derived from the live series (no Prometheus needed: this page must work
when Grafana is out of reach) and each carries the time it began.

Node: ``up`` / ``down`` (no report within stale_after).
Camera, worst first: ``down`` (its node is down, no RTP packets for ``DOWN_AFTER`` s, or
its RTSP probe fails), ``frozen`` (packets but no complete frame for ``FROZEN_AFTER`` s),
``lossy`` (more than ``LOSSY_RATIO`` of packets lost since the previous report),
``ok``; ``unknown`` while nothing about it was reported yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from collector.inventory import Inventory
from collector.state import NodeState, Snapshot

DOWN_AFTER = 5.0
FROZEN_AFTER = 3.0
LOSSY_RATIO = 0.01


@dataclass
class Tracked:
    state: str
    since: float


@dataclass
class StatusTracker:
    """Remembers when each node's and camera's state began."""

    nodes: dict[str, Tracked] = field(default_factory=dict)
    cameras: dict[str, Tracked] = field(default_factory=dict)

    def track(self, table: dict[str, Tracked], key: str, state: str, now: float) -> Tracked:
        t = table.get(key)
        if t is None or t.state != state:
            t = table[key] = Tracked(state, now)
        return t


Index = dict[str, dict[str, float]]


@dataclass
class NodeIndex:
    """One pass over a node's series: metric -> {camera or target label: value}."""

    cur: Index = field(default_factory=dict)
    prev: Index = field(default_factory=dict)  # each counter's value before its latest report
    uplink: str | None = None  # interface of the default route in use


def _index(n: NodeState) -> NodeIndex:
    idx = NodeIndex()
    for key, (value, _ts) in n.series.items():
        if not isinstance(value, int | float):
            continue
        metric, labels = key
        d = dict(labels)
        if metric == "mogli_uplink_info":
            if value == 1 and idx.uplink is None:
                idx.uplink = d.get("interface")
            continue
        if metric == "mogli_probe_success" and d.get("probe") != "rtsp":
            continue  # only the RTSP probe's success says something about a camera
        who = d.get("camera") or d.get("target") or ""
        idx.cur.setdefault(metric, {})[who] = float(value)
        before = n.previous.get(key)
        if isinstance(before, int | float):
            idx.prev.setdefault(metric, {})[who] = float(before)
    return idx


def camera_state(cam: str, live: bool, idx: NodeIndex | None) -> tuple[str, dict[str, Any]]:
    if not live or idx is None:
        return "down", {"why": "node down"}
    cur, prev = idx.cur, idx.prev

    def v(metric: str, of: Index = cur) -> float | None:
        return of.get(metric, {}).get(cam)

    pkt_age = v("mogli_rtp_last_packet_age_seconds")
    frame_age = v("mogli_rtp_last_frame_age_seconds")
    success = v("mogli_probe_success")
    rtsp_ok = None if success is None else success == 1
    info: dict[str, Any] = {"fps": v("mogli_rtp_frames_per_second"), "last_packet_age_s": pkt_age,
                            "last_frame_age_s": frame_age, "rtsp_ok": rtsp_ok}
    if pkt_age is None and rtsp_ok is None:
        return "unknown", info
    if (pkt_age is not None and pkt_age > DOWN_AFTER) or (pkt_age is None and rtsp_ok is False):
        return "down", info
    if frame_age is not None and frame_age > FROZEN_AFTER:
        return "frozen", info
    packets, lost = v("mogli_rtp_packets_total"), v("mogli_rtp_lost_packets_total") or 0.0
    packets_before = v("mogli_rtp_packets_total", prev)
    if packets is not None:
        ratio = 0.0
        if packets_before is not None:  # over the camera's last report
            dlost = max(0.0, lost - (v("mogli_rtp_lost_packets_total", prev) or 0.0))
            seen = max(0.0, packets - packets_before) + dlost
            ratio = dlost / seen if seen else 0.0
        info["loss_ratio"] = ratio
        if ratio > LOSSY_RATIO:
            return "lossy", info
    return "ok", info


def status(snap: Snapshot, inv: Inventory | None, tr: StatusTracker) -> dict[str, Any]:
    now = snap.now
    idx = {nid: _index(n) for nid, n in snap.nodes.items()}
    node_ids = set(snap.nodes) | (set(inv.nodes) if inv else set())
    nodes = []
    for nid in sorted(node_ids):
        n = snap.nodes.get(nid)
        live = n is not None and snap.live(n)
        state = "up" if live else "down"
        t = tr.track(tr.nodes, nid, state, now)
        if state == "down" and n is not None and n.last_report and t.since == now:
            t.since = min(now, n.last_report + snap.stale_after)  # it went down when it went silent
        entry: dict[str, Any] = {
            "node": nid,
            "site": n.site if n else (inv.site.id if inv else ""),
            "title": inv.nodes[nid].title if inv and nid in inv.nodes else nid,
            "state": state,
            "since": t.since,
            "last_seen": n.last_report if n and n.last_report else None,
        }
        if n is not None and live:
            entry["uplink"] = idx[nid].uplink
            loss = idx[nid].cur.get("mogli_icmp_loss_ratio", {})
            rtt = idx[nid].cur.get("mogli_icmp_rtt_avg_seconds", {})
            if loss:
                worst = max(loss, key=lambda k: loss[k])
                entry["link"] = {"target": worst, "loss_ratio": loss[worst], "rtt_avg_s": rtt.get(worst)}
            entry["clock_offset_s"] = n.clock_offset
        nodes.append(entry)
    cams: dict[str, tuple[str, str]] = {}  # camera -> (node, title)
    if inv:
        cams.update({c: (e.node, e.title or c) for c, e in inv.cameras.items()})
    for nid, ni in idx.items():  # cameras measured but not in the inventory
        for metric, values in ni.cur.items():
            if metric.startswith("mogli_rtp_"):
                for cam in values:
                    if cam:
                        cams.setdefault(cam, (nid, cam))
    cameras = []
    for cam in sorted(cams):
        nid, title = cams[cam]
        n = snap.nodes.get(nid)
        live = n is not None and snap.live(n)
        state, info = camera_state(cam, live, idx.get(nid))
        t = tr.track(tr.cameras, cam, state, now)
        cameras.append({"camera": cam, "node": nid, "title": title, "state": state, "since": t.since, **info})
    return {"now": now, "nodes": nodes, "cameras": cameras}


TEXT = {
    "de": {"title": "MOGLI Lage", "nodes": "Netzwerkkoffer", "cameras": "Kameras", "since": "seit",
           "up": "in Betrieb", "down": "AUSGEFALLEN", "ok": "ok", "lossy": "Paketverlust", "frozen": "EINGEFROREN",
           "unknown": "unbekannt", "uplink": "Uplink", "link": "Strecke", "ago": "vor", "updated": "Stand",
           "loss": "Verlust", "none": "keine"},
    "en": {"title": "MOGLI status", "nodes": "Network cases", "cameras": "Cameras", "since": "since",
           "up": "up", "down": "DOWN", "ok": "ok", "lossy": "packet loss", "frozen": "FROZEN",
           "unknown": "unknown", "uplink": "uplink", "link": "link", "ago": "ago", "updated": "as of",
           "loss": "loss", "none": "none"},
}
COLOURS = {"up": "#1a7f37", "ok": "#1a7f37", "lossy": "#b35900", "frozen": "#b3001b", "down": "#b3001b",
           "unknown": "#555"}


def _ago(seconds: float, t: dict[str, str]) -> str:
    s = int(max(0, seconds))
    txt = f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"
    return f"{t['ago']} {txt}" if t["ago"] == "vor" else f"{txt} {t['ago']}"


def render_html(st: dict[str, Any], lang: str) -> str:
    import time as _time

    t = TEXT.get(lang, TEXT["de"])
    now = st["now"]

    def badge(state: str) -> str:
        return (f'<span class=b style="background:{COLOURS.get(state, "#555")}">'
                f"{escape(t.get(state, state))}</span>")

    def worst_first(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: (order.index(r["state"]) if r["state"] in order else 9, r["title"]))

    node_rows = []
    for n in worst_first(st["nodes"], ["down", "up"]):
        extra = []
        if n.get("uplink"):
            extra.append(f"{t['uplink']} {escape(str(n['uplink']))}")
        link = n.get("link")
        if link:
            rtt = f", {link['rtt_avg_s'] * 1000:.1f} ms" if link.get("rtt_avg_s") is not None else ""
            extra.append(f"{t['link']} {escape(link['target'])}: {t['loss']} {link['loss_ratio'] * 100:.0f} %{rtt}")
        node_rows.append(
            f"<li>{badge(n['state'])} <b>{escape(n['title'])}</b> <small>{escape(n['node'])}</small><br>"
            f"<small>{t['since']} {_time.strftime('%H:%M:%S', _time.localtime(n['since']))} "
            f"({_ago(now - n['since'], t)}){' · ' + ' · '.join(extra) if extra else ''}</small></li>")
    cam_rows = []
    for c in worst_first(st["cameras"], ["down", "frozen", "lossy", "unknown", "ok"]):
        fps = f" · {c['fps']:.0f} fps" if c.get("fps") is not None else ""
        cam_rows.append(
            f"<li>{badge(c['state'])} <b>{escape(c['title'])}</b> <small>{escape(c['camera'])} @ "
            f"{escape(c['node'])}</small><br><small>{t['since']} "
            f"{_time.strftime('%H:%M:%S', _time.localtime(c['since']))} ({_ago(now - c['since'], t)}){fps}"
            f"</small></li>")
    other = "en" if lang != "en" else "de"
    return (
        f"<!doctype html><html lang={lang}><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<meta http-equiv=refresh content=10><title>{t['title']}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:40em;padding:.5em;font-size:17px}"
        "ul{list-style:none;padding:0}li{padding:.45em 0;border-bottom:1px solid #ddd}"
        ".b{color:#fff;border-radius:.3em;padding:.1em .45em;font-weight:600;font-size:.9em}"
        "small{color:#444}h2{margin:.8em 0 .2em;font-size:1.15em}</style></head><body>"
        f"<h1>{t['title']}</h1><small>{t['updated']} {_time.strftime('%H:%M:%S', _time.localtime(now))} · "
        f"<a href='?lang={other}'>{other.upper()}</a></small>"
        f"<h2>{t['nodes']}</h2><ul>{''.join(node_rows) or '<li>' + t['none'] + '</li>'}</ul>"
        f"<h2>{t['cameras']}</h2><ul>{''.join(cam_rows) or '<li>' + t['none'] + '</li>'}</ul>"
        "</body></html>"
    )
