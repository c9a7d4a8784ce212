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
    # previous (packets, lost) per camera for the loss ratio between reports
    counters: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def track(self, table: dict[str, Tracked], key: str, state: str, now: float) -> Tracked:
        t = table.get(key)
        if t is None or t.state != state:
            t = table[key] = Tracked(state, now)
        return t


def _values(n: NodeState, name: str) -> dict[str, float]:
    """The named metric's values on one node keyed by their camera / target label."""
    out = {}
    for (metric, labels), (value, _ts) in n.series.items():
        if metric == name and isinstance(value, int | float):
            d = dict(labels)
            out[d.get("camera") or d.get("target") or ""] = float(value)
    return out


def camera_state(tr: StatusTracker, cam: str, n: NodeState | None, live: bool) -> tuple[str, dict[str, Any]]:
    if n is None or not live:
        return "down", {"why": "node down"}
    pkt_age = _values(n, "mogli_rtp_last_packet_age_seconds").get(cam)
    frame_age = _values(n, "mogli_rtp_last_frame_age_seconds").get(cam)
    packets = _values(n, "mogli_rtp_packets_total").get(cam)
    lost = _values(n, "mogli_rtp_lost_packets_total").get(cam, 0.0)
    rtsp_ok = None
    for (metric, labels), (value, _ts) in n.series.items():
        d = dict(labels)
        if metric == "mogli_probe_success" and d.get("probe") == "rtsp" and d.get("target") == cam:
            rtsp_ok = value == 1
    fps = _values(n, "mogli_rtp_frames_per_second").get(cam)
    info: dict[str, Any] = {"fps": fps, "last_packet_age_s": pkt_age, "last_frame_age_s": frame_age,
                            "rtsp_ok": rtsp_ok}
    if pkt_age is None and rtsp_ok is None:
        return "unknown", info
    if (pkt_age is not None and pkt_age > DOWN_AFTER) or (pkt_age is None and rtsp_ok is False):
        return "down", info
    if frame_age is not None and frame_age > FROZEN_AFTER:
        return "frozen", info
    if packets is not None:
        prev = tr.counters.get(cam)
        ratio = 0.0
        if prev is not None:
            ratio = prev[2]
            if packets > prev[0]:
                dlost = max(0.0, lost - prev[1])
                ratio = dlost / (packets - prev[0] + dlost)
        tr.counters[cam] = (packets, lost, ratio)
        info["loss_ratio"] = ratio
        if ratio > LOSSY_RATIO:
            return "lossy", info
    return "ok", info


def status(snap: Snapshot, inv: Inventory | None, tr: StatusTracker) -> dict[str, Any]:
    now = snap.now
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
            uplinks = [dict(lb) for (m, lb), _ in n.series.items() if m == "mogli_uplink_info"]
            entry["uplink"] = uplinks[0].get("interface") if uplinks else None
            loss = _values(n, "mogli_icmp_loss_ratio")
            rtt = _values(n, "mogli_icmp_rtt_avg_seconds")
            if loss:
                worst = max(loss, key=lambda k: loss[k])
                entry["link"] = {"target": worst, "loss_ratio": loss[worst], "rtt_avg_s": rtt.get(worst)}
            entry["clock_offset_s"] = n.clock_offset
        nodes.append(entry)
    cams: dict[str, tuple[str, str]] = {}  # camera -> (node, title)
    if inv:
        cams.update({c: (e.node, e.title or c) for c, e in inv.cameras.items()})
    for nid, n in snap.nodes.items():
        for (m, labels), _ in n.series.items():
            cam = dict(labels).get("camera")
            if m.startswith("mogli_rtp_") and cam and cam not in cams:
                cams[cam] = (nid, cam)
    cameras = []
    for cam in sorted(cams):
        nid, title = cams[cam]
        n = snap.nodes.get(nid)
        live = n is not None and snap.live(n)
        state, info = camera_state(tr, cam, n, live)
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
