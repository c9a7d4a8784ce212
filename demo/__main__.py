"""`make demo`: a simulated festival (Maikerwe, Kaiserslautern old town) on one machine.

Six network cases (nodes) with an agent each, a simulated camera (GStreamer RTSP server) and a switch per
case, the collector with the event's inventory, Prometheus with the project's rules, Alertmanager with the
rendered template, and a local "incident staff" webhook that prints every push. A scripted scenario then
freezes a camera, cuts a node's uplink and makes a link lossy, each for a while, and the console tells what
happens and what was pushed.

As root every node is a network namespace of its own (veth to a bridge in a hub namespace, 10.77.0.0/24
exists only inside them) and link faults are nftables rules there; otherwise nodes use loopback aliases
127.0.x.y and the faults are played by the demo's uplink relays. Runs until Ctrl-C or DEMO_DURATION
seconds; DEMO_SCENARIO=short runs the scenario in about two minutes (for tests). Everything lives in
./.demo/ (or DEMO_DIR); every process, namespace and nft table is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
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
from typing import Any

from demo import netns
from demo.relay import Relay

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SITE = "maikerwe-2026"
SYSTEM_PYTHON = "/usr/bin/python3"
RULES = [ROOT / "deploy/prometheus/rules/mogli-recording.yml", ROOT / "deploy/prometheus/rules/mogli-alerts.yml",
         ROOT / "demo/rules/demo-alerts.yml"]


@dataclass(frozen=True)
class Node:
    id: str
    title: str
    lat: float
    lon: float
    role: str
    camera_title: str


# The first Maikerwe set-up: six cases in the old town (approximate coordinates).
NODES = [
    Node("stiftsplatz", "Stiftsplatz", 49.44432, 7.76885, "edge", "Stiftsplatz Bühne"),
    Node("schillerplatz", "Schillerplatz", 49.44307, 7.76975, "edge", "Schillerplatz Brunnen"),
    Node("martinsplatz", "Martinsplatz", 49.44186, 7.76641, "edge", "Martinsplatz Weinstände"),
    Node("rathaus", "Rathaus", 49.44353, 7.77118, "core", "Rathaus Eingang"),
    Node("fruchthalle", "Fruchthalle", 49.44370, 7.76710, "edge", "Fruchthalle Vorplatz"),
    Node("pfalztheater", "Pfalztheater", 49.44290, 7.77380, "edge", "Pfalztheater Willy-Brandt-Platz"),
]
FLAKY = "schillerplatz"  # its switch blips: gone for BLIP s every minute, too short for any push
BLIP = 4


@dataclass(frozen=True)
class Step:
    at: float  # seconds after start
    kind: str  # freeze | cut | loss
    node: str
    length: float


# after about a minute a camera freezes, then a node's uplink is cut for a minute, then a link gets lossy
SCENARIOS = {
    "full": [Step(60, "freeze", "fruchthalle", 60), Step(150, "cut", "pfalztheater", 60),
             Step(240, "loss", "martinsplatz", 60)],
    # for tests: the faults overlap (on different nodes) so that all pushes and resolves fit in ~2 minutes
    "short": [Step(15, "freeze", "fruchthalle", 30), Step(20, "loss", "martinsplatz", 45),
              Step(25, "cut", "pfalztheater", 30)],
}
LOSS_PERCENT = 30


def port_or_free(preferred: int = 0) -> int:
    """preferred if it is free on 127.0.0.1, else (or when 0) any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cameras_possible() -> str:
    """Why simulated cameras cannot run here, or '' when they can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} missing"
    r = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', "
         "'1.0'); from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "print(' '.join(e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if not Gst.ElementFactory.find(e)))"],
        capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return "python3-gi / gir1.2-gst-rtsp-server-1.0 missing"
    return f"GStreamer elements missing: {r.stdout.strip()}" if r.stdout.strip() else ""


class Demo:
    def __init__(self, workdir: Path, duration: float | None, scenario: str, use_netns: bool):
        self.dir = workdir
        self.duration = duration
        self.steps = SCENARIOS[scenario]
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}
        self.collector_port = port_or_free(9630)
        self.prom_port = port_or_free(9090)
        self.am_port = port_or_free(9093)
        self.hook_port = port_or_free(9099)
        self.device_port = port_or_free(8022)
        self.topo = netns.Topology([n.id for n in NODES]) if use_netns else None
        self.relays: dict[str, Relay] = {}
        self.cam_ports = {n.id: 8554 if use_netns else port_or_free() for n in NODES}
        self.cameras = False
        self.prometheus = shutil.which("prometheus")
        self.alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        self.stop = asyncio.Event()
        self.failed = False  # a process of the demo died by itself

    # ------------------------------------------------------------------ addresses per mode
    def uplink_addr(self, i: int) -> str:
        """Where node i reaches the operations centre (the collector through its uplink)."""
        return netns.HUB_IP if self.topo else f"127.0.1.{i + 1}"

    def device_addr(self, i: int) -> str:
        return "127.0.0.1" if self.topo else f"127.0.10.{i + 1}"

    def in_node(self, node: str) -> list[str]:
        return netns.exec_prefix(self.topo.ns(node)) if self.topo else []

    # ------------------------------------------------------------------ processes
    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append((name, p))
        self.by_name[name] = p
        return p

    def write_configs(self) -> None:
        tokens = {n.id: secrets.token_urlsafe(24) for n in NODES}
        inventory = {
            "site": {"id": SITE, "title": "Maikerwe 2026", "lat": 49.4435, "lon": 7.7690},
            "nodes": {n.id: {"title": n.title, "lat": n.lat, "lon": n.lon, "role": n.role} for n in NODES},
            "cameras": {f"cam-{n.id}": {"node": n.id, "title": n.camera_title,
                                        "lat": round(n.lat + 0.00012, 5), "lon": round(n.lon - 0.00010, 5)}
                        for n in NODES} if self.cameras else {},
        }
        (self.dir / "inventory.yml").write_text(json.dumps(inventory, indent=2, ensure_ascii=False))
        collector: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": self.collector_port},
            "state_path": str(self.dir / "collector-state.db"),
            "stale_after": 60,
            "inventory": str(self.dir / "inventory.yml"),
            "agents": {n: {"token_sha256": hashlib.sha256(t.encode()).hexdigest()} for n, t in tokens.items()},
        }
        if self.prometheus:
            collector["remote_write"] = {"url": f"http://127.0.0.1:{self.prom_port}/api/v1/write", "late_after": 20}
        (self.dir / "collector.yml").write_text(json.dumps(collector, indent=2))
        for i, n in enumerate(NODES):
            tok = self.dir / f"{n.id}.token"
            tok.write_text(tokens[n.id])
            tok.chmod(0o600)
            probes: dict[str, list[dict[str, Any]]] = {"tcp": [
                # timeout below the kernel's 1 s SYN retransmission: a lost SYN is a failed probe, not a
                # race between the retransmitted SYN and the timeout
                {"target": f"{self.uplink_addr(i)}:{self.collector_port}", "name": "uplink", "interval": 1,
                 "timeout": 0.5},
                {"target": f"{self.device_addr(i)}:{self.device_port}", "name": f"switch-{n.id}", "interval": 2,
                 "timeout": 1},
            ]}
            if self.cameras:
                probes["rtsp"] = [{"target": f"rtsp://127.0.0.1:{self.cam_ports[n.id]}/cam", "name": f"cam-{n.id}",
                                   "interval": 5, "timeout": 4, "play_seconds": 1, "min_session_gap": 1,
                                   "backoff_base": 2, "backoff_max": 8}]
            cfg = {
                "node": n.id,
                "site": SITE,
                "collector": {"url": f"http://{self.uplink_addr(i)}:{self.collector_port}/api/v1/reports",
                              "token_file": str(tok), "report_interval": 2, "backoff_max": 5},
                "spool": {"path": str(self.dir / f"{n.id}-spool.db")},
                "probes": probes,
            }
            (self.dir / f"{n.id}.yml").write_text(json.dumps(cfg, indent=2))
        prom = [
            "global: {scrape_interval: 5s, evaluation_interval: 5s}",
            "storage: {tsdb: {out_of_order_time_window: 30m}}",
            "rule_files:", *[f"  - {json.dumps(str(r))}" for r in RULES],
            "scrape_configs:",
            "  - job_name: mogli",
            "    honor_labels: true",
            f"    static_configs: [{{targets: ['127.0.0.1:{self.collector_port}']}}]",
        ]
        if self.alertmanager:
            prom += ["alerting:", "  alertmanagers:",
                     f"    - static_configs: [{{targets: ['127.0.0.1:{self.am_port}']}}]"]
        (self.dir / "prometheus.yml").write_text("\n".join(prom) + "\n")
        if self.alertmanager:
            sys.path.insert(0, str(ROOT / "deploy/alertmanager"))
            try:
                import render  # type: ignore[import-not-found]  # deploy/alertmanager/render.py: what the Ansible role renders

                text = render.render({
                    "mogli_alertmanager_templates_dir": str(ROOT / "deploy/alertmanager/templates"),
                    "mogli_alertmanager_contacts": {"webhooks": [f"http://127.0.0.1:{self.hook_port}/alertmanager"]},
                })
            finally:
                sys.path.remove(str(ROOT / "deploy/alertmanager"))
            (self.dir / "alertmanager.yml").write_text(text)

    # ------------------------------------------------------------------ simulated things
    async def device(self, i: int, node: Node) -> None:
        """A simulated switch in the case: accepts TCP connections; the flaky one goes away now and then."""

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        while not self.stop.is_set():
            if self.topo:
                sock = await asyncio.to_thread(netns.listen_in, self.topo.ns(node.id), "127.0.0.1", self.device_port)
                server = await asyncio.start_server(handle, sock=sock)
            else:
                server = await asyncio.start_server(handle, self.device_addr(i), self.device_port)
            up_for = 60 - BLIP if node.id == FLAKY else 10**9
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), up_for)
            server.close()
            await server.wait_closed()
            if self.stop.is_set():
                break
            say(f"background: the switch at {node.title} blips for {BLIP} s (every minute; shorter than the alerts' "
                "hold time, so no push)")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), BLIP)

    async def start_uplinks(self) -> None:
        up = ("127.0.0.1", self.collector_port)
        if self.topo:
            hub = Relay(up)
            sock = await asyncio.to_thread(netns.listen_in, self.topo.hub, netns.HUB_IP, self.collector_port)
            await hub.start(sock=sock)
            self.relays["hub"] = hub
        else:
            for i, n in enumerate(NODES):
                r = Relay(up)
                await r.start(self.uplink_addr(i), self.collector_port)
                self.relays[n.id] = r

    def set_link(self, node: str, loss: int) -> None:
        if self.topo:
            self.topo.set_loss(node, loss)
        else:
            self.relays[node].set_loss(loss)

    async def webhook(self) -> Any:
        """The incident staff's phone: prints every push from Alertmanager."""
        from aiohttp import web

        async def push(request: web.Request) -> web.Response:
            body = await request.json()
            for a in body.get("alerts", []):
                lab = a.get("labels", {})
                where = " ".join(f"{k}={lab[k]}" for k in ("node", "camera") if k in lab)
                text = a.get("annotations", {}).get("summary_de") or a.get("annotations", {}).get("summary", "")
                say(f"PUSH {a.get('status', '?')} {lab.get('alertname', '?')} [{lab.get('severity', '')}] "
                    f"{where}: {text}")
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/alertmanager", push)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.hook_port).start()
        return runner

    # ------------------------------------------------------------------ the scenario
    async def fault(self, step: Step) -> None:
        node = next(n for n in NODES if n.id == step.node)
        if step.kind == "freeze" and not self.cameras:
            say(f"(skipping the camera freeze at {node.title}: no cameras here)")
            return
        cam = self.by_name.get(f"camera-{node.id}")
        if step.kind == "freeze" and cam is not None:
            say(f"FAULT: camera cam-{node.id} ({node.camera_title}) freezes (its RTSP server stops answering) "
                f"for {step.length:.0f} s; expect MogliCameraDown")
            cam.send_signal(signal.SIGSTOP)
        elif step.kind == "cut":
            say(f"FAULT: the uplink of {node.title} is cut for {step.length:.0f} s; the agent keeps measuring into "
                "its spool; expect MogliNodeSilent")
            self.set_link(node.id, 100)
        elif step.kind == "loss":
            say(f"FAULT: the link of {node.title} loses {LOSS_PERCENT} % of its packets for {step.length:.0f} s; "
                "expect MogliDemoUplinkLossy")
            self.set_link(node.id, LOSS_PERCENT)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), step.length)
        if step.kind == "freeze" and cam is not None:
            cam.send_signal(signal.SIGCONT)
            if not self.stop.is_set():
                say(f"RECOVERED: camera cam-{node.id} streams again")
        else:
            self.set_link(node.id, 0)
            if not self.stop.is_set():
                say(f"RECOVERED: the link of {node.title} is clean again"
                    + ("; the agent replays its spool" if step.kind == "cut" else ""))

    async def scenario(self, started: float) -> None:
        tasks = []
        for step in self.steps:
            delay = started + step.at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                break
            tasks.append(asyncio.create_task(self.fault(step)))
        await asyncio.gather(*tasks)
        if not self.stop.is_set():
            say("scenario done: every fault recovered; watch the resolved pushes come in")

    def prometheus_query(self, q: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=3) as r:
            data = json.load(r)
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    async def report(self) -> None:
        last = ""
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 10)
            try:
                rows = await asyncio.to_thread(self.prometheus_query, "mogli_probe_success")
                silent = await asyncio.to_thread(
                    self.prometheus_query, "time() - mogli_agent_last_report_timestamp_seconds > 12")
            except (OSError, ValueError, KeyError):
                continue
            down = sorted(f"{r['metric'].get('node')}/{r['metric'].get('target')}" for r in rows
                          if r["value"][1] == "0")
            quiet = sorted(str(r["metric"].get("node")) for r in silent)
            line = (f"Prometheus: {len(rows)} probe series; silent nodes: {', '.join(quiet) or 'none'}; "
                    f"failing probes: {', '.join(down) or 'none'}")
            if line != last:
                say(line)
                last = line

    # ------------------------------------------------------------------ main
    async def run(self) -> int:
        why = cameras_possible()
        self.cameras = not why
        if why:
            say(f"no simulated cameras: {why}")
        if self.topo:
            for gone in netns.remove_stale():
                say(f"removed namespace {gone} left over by an earlier demo")
            self.topo.up()
            say(f"network: namespaces {self.topo.tag}-<node> and {self.topo.hub} (bridge 10.77.0.0/24), "
                "link faults by nftables")
        else:
            say("network: not root, so nodes use loopback aliases 127.0.x.y and the demo's relays play the faults")
        self.write_configs()
        hook = await self.webhook()
        await self.start_uplinks()
        self.start("collector", [str(BIN / "mogli-collector"), "run", "-c", str(self.dir / "collector.yml")])
        if self.alertmanager:
            (self.dir / "am-data").mkdir(exist_ok=True)
            self.start("alertmanager", [
                self.alertmanager, f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'am-data'}", f"--web.listen-address=127.0.0.1:{self.am_port}",
                "--cluster.listen-address=", f"--web.external-url=http://127.0.0.1:{self.am_port}"])
        else:
            say("alertmanager is not installed (apt-get install prometheus-alertmanager): no pushes")
        if self.prometheus:
            self.start("prometheus", [
                self.prometheus, f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}", "--web.enable-remote-write-receiver",
            ])
        else:
            say("prometheus is not installed (apt-get install prometheus): running without it")
        for n in NODES:
            if self.cameras:
                self.start(f"camera-{n.id}", [*self.in_node(n.id), SYSTEM_PYTHON, str(ROOT / "tests/camera.py"),
                                              "--port", str(self.cam_ports[n.id]), "--fps", "25"])
            self.start(f"agent-{n.id}", [*self.in_node(n.id), str(BIN / "mogli-agent"), "run",
                                         "-c", str(self.dir / f"{n.id}.yml")])
        say(f"status page   http://127.0.0.1:{self.collector_port}/")
        say(f"metrics       http://127.0.0.1:{self.collector_port}/metrics")
        if self.prometheus:
            say(f"Prometheus    http://127.0.0.1:{self.prom_port}/alerts")
        if self.alertmanager:
            say(f"Alertmanager  http://127.0.0.1:{self.am_port}/")
        grafana = ROOT / "grafana" / "provisioning"
        say(f"Grafana provisioning: {grafana}" + ("" if grafana.exists() else " (missing)"))
        say(f"incident staff webhook http://127.0.0.1:{self.hook_port}/alertmanager (pushes are printed here)")
        say(f"logs and configs in {self.dir}")
        say("Ctrl-C stops" + (f"; stopping by itself after {self.duration:.0f} s" if self.duration else ""))
        plan = "; ".join(f"{s.at:.0f} s: {s.kind} at {s.node} for {s.length:.0f} s" for s in self.steps)
        say(f"scenario: {plan}")

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop.set)
        started = time.monotonic()
        tasks = [asyncio.create_task(self.device(i, n)) for i, n in enumerate(NODES)]
        tasks.append(asyncio.create_task(self.report()))
        tasks.append(asyncio.create_task(self.scenario(started)))
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1)
            for name, p in self.procs:
                if p.poll() is not None:
                    say(f"{name} exited with {p.returncode}; see {self.dir / (name + '.log')}")
                    self.failed = True
                    self.stop.set()
            if self.duration and time.monotonic() - started >= self.duration:
                self.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        # agents first, while the uplinks, the collector and the cameras still run: they end their RTSP
        # sessions and deliver their last batch
        await asyncio.to_thread(self.stop_procs, "agent-")
        for r in self.relays.values():
            await r.close()
        await hook.cleanup()
        lint = await asyncio.to_thread(self.check_metrics)
        return 1 if self.failed else lint

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

    def stop_procs(self, prefix: str = "") -> None:
        """SIGTERM the demo's processes whose name starts with prefix, wait for them, kill what hangs."""
        mine = [(n, p) for n, p in reversed(self.procs) if n.startswith(prefix) and p.poll() is None]
        if not mine:
            return
        say(f"stopping {'the agents' if prefix else 'everything'} (a few seconds)")
        for _, p in mine:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)  # a frozen camera must be able to die
                p.send_signal(signal.SIGTERM)
        for name, p in mine:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within 10 s of SIGTERM; killing it")
                p.kill()
                p.wait()

    def cleanup(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave half of it behind
        self.stop_procs()
        say("all demo processes stopped")
        if self.topo:
            failed = self.topo.down()
            say("namespaces removed" if not failed else f"could not remove namespaces: {', '.join(failed)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    duration = None
    if os.environ.get("DEMO_DURATION"):
        try:
            duration = float(os.environ["DEMO_DURATION"])
        except ValueError:
            duration = -1
        if not duration > 0:
            print(f"DEMO_DURATION={os.environ['DEMO_DURATION']}: must be a number of seconds > 0", file=sys.stderr)
            return 2
    scenario = os.environ.get("DEMO_SCENARIO", "full")
    if scenario not in SCENARIOS:
        print(f"DEMO_SCENARIO={scenario}: must be one of {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    netns_env = os.environ.get("DEMO_NETNS", "auto")
    use_netns = os.geteuid() == 0 and netns_env != "0" and bool(shutil.which("ip")) and bool(shutil.which("nft"))
    workdir = Path(os.environ.get("DEMO_DIR") or ROOT / ".demo").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    random.seed()
    demo = Demo(workdir, duration, scenario, use_netns)
    # SIGINT/SIGTERM before the loop's handlers are in place still end in cleanup()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        return 130
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
