"""Test plumbing for alerting: render the Alertmanager config, run a real Alertmanager, and a webhook
receiver that stands in for the staff phone (records every push with its arrival time)."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from helpers import ROOT, Proc, free_port, http_get, tool, wait_until

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
