"""Test plumbing for alerting: render the Alertmanager config, run a real Alertmanager, and a webhook
receiver that stands in for the staff phone (records every push with its arrival time)."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from helpers import (
    ROOT,
    Proc,
    Prometheus,
    free_port,
    http_get,
    start_agent,
    start_collector,
    tool,
    wait_until,
    write_agent_config,
    write_collector_config,
)

AM_DIR = ROOT / "deploy" / "alertmanager"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"


def render_am_config(variables: dict[str, Any]) -> str:
    sys.path.insert(0, str(AM_DIR))
    try:
        import render  # deploy/alertmanager/render.py

        return str(render.render(variables))
    finally:
        sys.path.remove(str(AM_DIR))


class WebhookReceiver:
    """Collects Alertmanager webhook pushes: list of (arrival time, payload)."""

    def __init__(self) -> None:
        self.pushes: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.pushes.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/alertmanager"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self, status: str | None = None, **labels: str) -> list[tuple[float, dict[str, Any]]]:
        """(push time, alert) for every alert in every push, filtered by alert status and labels."""
        with self._lock:
            pushes = list(self.pushes)
        return [(t, a) for t, p in pushes for a in p["alerts"]
                if (status is None or a["status"] == status)
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Alertmanager:
    """A real Alertmanager (Debian prometheus-alertmanager 0.25), clustering off, own storage."""

    def __init__(self, d: Path, config_text: str):
        binary = tool("prometheus-alertmanager")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = d / "alertmanager.yml"
        cfg.write_text(config_text)
        (d / "am-data").mkdir(exist_ok=True)
        self.proc = Proc(
            [binary, f"--config.file={cfg}", f"--storage.path={d / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
             f"--web.external-url={self.url}"],
            d / "alertmanager.log",
        )
        wait_until(lambda: http_get(f"{self.url}/-/ready")[0] == 200 or not self.proc.alive(), 30,
                   "alertmanager ready")
        assert self.proc.alive(), self.proc.output()

    def stop(self) -> None:
        self.proc.stop()


def webhook_only_vars(receiver_url: str, **extra: Any) -> dict[str, Any]:
    """Variables for a config whose only channel is our webhook, templates from this checkout."""
    v: dict[str, Any] = {
        "mogli_alertmanager_templates_dir": str(AM_DIR / "templates"),
        "mogli_alertmanager_contacts": {"webhooks": [receiver_url]},
    }
    v.update(extra)
    return v


class TcpService:
    """A listening TCP port on 127.0.0.1 that a probe watches; down() refuses connections, up() restores."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sock: socket.socket | None = None
        self.up()

    def up(self) -> None:
        sock = socket.create_server(("127.0.0.1", self.port))
        self._sock = sock

        def serve() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=serve, daemon=True).start()

    def down(self) -> None:
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None


class AlertStack:
    """The whole chain with real processes: two agents -> collector -> Prometheus with the shipped rules ->
    Alertmanager with the rendered template -> webhook receiver (the staff phone).

    Node "stiftsplatz" probes a TCP service "kasse" (the ticket office); node "schillerplatz" probes the
    collector's port. Agents report every 0.5 s, Prometheus scrapes and evaluates every 5 s.
    """

    NODES = {"stiftsplatz": "token-stiftsplatz-0123456789", "schillerplatz": "token-schillerplatz-0123456789"}

    def __init__(self, d: Path, extra_rule_files: list[str] | None = None, stale_after: float = 60):
        self.d = d
        self.procs: list[Any] = []
        self.rx = WebhookReceiver()
        self.kasse = TcpService()
        try:
            self.col_port = free_port()
            cfg = write_collector_config(d, self.col_port, self.NODES, stale_after=stale_after)
            self.collector = start_collector(d, self.col_port, cfg)
            self.procs.append(self.collector)
            probes = {
                "stiftsplatz": {"tcp": [{"target": f"127.0.0.1:{self.kasse.port}", "name": "kasse",
                                         "interval": 1, "timeout": 0.5}]},
                "schillerplatz": {"tcp": [{"target": f"127.0.0.1:{self.col_port}", "name": "collector-port",
                                           "interval": 1, "timeout": 0.5}]},
            }
            self.agents = {}
            for node, token in self.NODES.items():
                acfg = write_agent_config(d, node, token, self.col_port, probes[node])
                self.agents[node] = start_agent(d, acfg, name=node)
                self.procs.append(self.agents[node])
            self.am = Alertmanager(d, render_am_config(webhook_only_vars(self.rx.url)))
            self.procs.append(self.am)
            rules = [str(RULES_DIR / "mogli-recording.yml"), str(RULES_DIR / "mogli-alerts.yml"),
                     *(extra_rule_files or [])]
            self.prom = Prometheus(d, [f"127.0.0.1:{self.col_port}"], scrape_interval="5s", rule_files=rules,
                                   alertmanager=f"127.0.0.1:{self.am.port}")
            self.procs.append(self.prom)
        except BaseException:
            self.close()
            raise

    def wait_healthy(self, timeout: float = 60) -> None:
        def ok() -> bool:
            up = {r["metric"]["node"] for r in self.prom.query("mogli_agent_up == 1")}
            kasse = self.prom.query('mogli_probe_success{target="kasse"} == 1')
            rules = self.prom.query("mogli:node_place:info")
            return up == set(self.NODES) and bool(kasse) and len(rules) == 2
        wait_until(ok, timeout, "both agents up and probing in Prometheus", interval=1)

    def stop_node(self, node: str) -> None:
        self.agents[node].p.send_signal(signal.SIGSTOP)

    def resume_node(self, node: str) -> None:
        self.agents[node].p.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for a in getattr(self, "agents", {}).values():
            if a.alive():
                a.p.send_signal(signal.SIGCONT)
        for p in reversed(self.procs):
            p.stop()
        self.kasse.down()
        self.rx.stop()
