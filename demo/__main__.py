"""`make demo`: the whole system on one machine with embedded defaults.

A collector, one agent per simulated network case (Kaiserslautern old town),
simulated devices for them to probe on loopback (one of them flaky, so there is
something to see), and a real Prometheus scraping the collector. Runs until
Ctrl-C, or DEMO_DURATION seconds. Everything lives in ./.demo/ and only talks to
127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SITE = "maikerwe-2026"


@dataclass(frozen=True)
class Node:
    id: str
    title: str
    lat: float
    lon: float
    device_ip: str  # a simulated switch in this case, on loopback


NODES = [
    Node("stiftsplatz", "Stiftsplatz", 49.44432, 7.76885, "127.0.10.1"),
    Node("schillerplatz", "Schillerplatz", 49.44307, 7.76975, "127.0.10.2"),
    Node("martinsplatz", "Martinsplatz", 49.44186, 7.76641, "127.0.10.3"),
]
FLAKY = "schillerplatz"  # its switch drops out for 20 s every minute


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Demo:
    def __init__(self, workdir: Path, duration: float | None):
        self.dir = workdir
        self.duration = duration
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.collector_port = port_or_free(9630)
        self.prom_port = port_or_free(9090)
        self.device_port = port_or_free(8022)

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def write_configs(self) -> None:
        tokens = {n.id: secrets.token_urlsafe(24) for n in NODES}
        import hashlib

        collector = {
            "listen": {"host": "127.0.0.1", "port": self.collector_port},
            "state_path": str(self.dir / "collector-state.db"),
            "stale_after": 15,
            "agents": {n: {"token_sha256": hashlib.sha256(t.encode()).hexdigest()} for n, t in tokens.items()},
        }
        (self.dir / "collector.yml").write_text(json.dumps(collector, indent=2))
        for n in NODES:
            tok = self.dir / f"{n.id}.token"
            tok.write_text(tokens[n.id])
            tok.chmod(0o600)
            cfg = {
                "node": n.id,
                "site": SITE,
                "collector": {"url": f"http://127.0.0.1:{self.collector_port}/api/v1/reports",
                              "token_file": str(tok), "report_interval": 2, "backoff_max": 10},
                "spool": {"path": str(self.dir / f"{n.id}-spool.db")},
                "probes": {"tcp": [
                    {"target": f"127.0.0.1:{self.collector_port}", "name": "collector", "interval": 5},
                    {"target": f"{n.device_ip}:{self.device_port}", "name": f"switch-{n.id}", "interval": 2,
                     "timeout": 1},
                ]},
            }
            (self.dir / f"{n.id}.yml").write_text(json.dumps(cfg, indent=2))
        prom = "\n".join([
            "global: {scrape_interval: 5s, evaluation_interval: 5s}",
            "scrape_configs:",
            "  - job_name: mogli",
            "    honor_labels: true",
            f"    static_configs: [{{targets: ['127.0.0.1:{self.collector_port}']}}]",
        ])
        (self.dir / "prometheus.yml").write_text(prom + "\n")

    async def device(self, node: Node, stop: asyncio.Event) -> None:
        """A simulated switch: accepts TCP connections; the flaky one goes away now and then."""

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        while not stop.is_set():
            server = await asyncio.start_server(handle, node.device_ip, self.device_port)
            up_for = 40 if node.id == FLAKY else 10**9
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), up_for)
            server.close()
            await server.wait_closed()
            if stop.is_set():
                break
            say(f"fault: the switch at {node.title} stops answering for 20 s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 20)
            say(f"recovered: the switch at {node.title} answers again")

    def prometheus_query(self, q: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=3) as r:
            data = json.load(r)
        result: list[dict[str, object]] = data["data"]["result"]
        return result

    async def report(self, stop: asyncio.Event) -> None:
        last = ""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 10)
            try:
                rows = await asyncio.to_thread(self.prometheus_query, 'mogli_probe_success{probe="tcp"}')
            except OSError:
                continue
            down = sorted(str(r["metric"]["target"]) for r in rows  # type: ignore[index]
                          if r["value"][1] == "0")  # type: ignore[index]
            line = f"Prometheus sees {len(rows)} probe series; failing: {', '.join(down) or 'none'}"
            if line != last:
                say(line)
                last = line

    async def run(self) -> int:
        self.write_configs()
        self.start("collector", [str(BIN / "mogli-collector"), "run", "-c", str(self.dir / "collector.yml")])
        prometheus = shutil.which("prometheus")
        if prometheus:
            self.start("prometheus", [
                prometheus, f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}", "--web.enable-remote-write-receiver",
            ])
        else:
            say("prometheus is not installed (apt-get install prometheus): running without it")
        for n in NODES:
            self.start(f"agent-{n.id}", [str(BIN / "mogli-agent"), "run", "-c", str(self.dir / f"{n.id}.yml")])
        say(f"status page   http://127.0.0.1:{self.collector_port}/")
        say(f"metrics       http://127.0.0.1:{self.collector_port}/metrics")
        if prometheus:
            say(f"Prometheus    http://127.0.0.1:{self.prom_port}/graph?g0.expr=mogli_probe_success")
        say(f"Grafana provisioning: {ROOT / 'grafana' / 'provisioning'} (see README)")
        say(f"logs and configs in {self.dir}")
        say("Ctrl-C stops" + (f"; stopping by itself after {self.duration:.0f} s" if self.duration else ""))

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(self.device(n, stop)) for n in NODES]
        tasks.append(asyncio.create_task(self.report(stop)))
        started = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
            for name, p in self.procs:
                if p.poll() is not None:
                    say(f"{name} exited with {p.returncode}; see {self.dir / (name + '.log')}")
                    stop.set()
            if self.duration and time.monotonic() - started >= self.duration:
                stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.check_metrics()

    def check_metrics(self) -> int:
        promtool = shutil.which("promtool")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.collector_port}/metrics", timeout=5) as r:
                text = r.read()
        except OSError as e:
            say(f"could not read /metrics: {e}")
            return 1
        if not promtool:
            return 0
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        findings = (lint.stdout + lint.stderr).decode().strip()
        say("promtool check metrics: " + ("no findings" if lint.returncode == 0 and not findings else findings))
        return 0 if lint.returncode == 0 and not findings else 1

    def cleanup(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop; killing it")
                p.kill()
        say("all demo processes stopped")


def main() -> int:
    duration = float(os.environ["DEMO_DURATION"]) if os.environ.get("DEMO_DURATION") else None
    workdir = ROOT / ".demo"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir()
    demo = Demo(workdir, duration)
    try:
        return asyncio.run(demo.run())
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
