"""Shared test plumbing: find real tools, free ports, start real processes.

With CI=true a missing tool fails the test; locally it skips with the reason.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BIN = Path(sys.executable).parent


def need(ok: bool, why: str) -> None:
    """Fail in CI, skip locally, when a precondition is missing."""
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true and {why}")
        pytest.skip(why)


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    need(path is not None, f"{name} is not installed (see the apt-get line in the Makefile)")
    assert path is not None
    return path


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (network namespaces, nftables)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Proc:
    """A background process whose output goes to a log file in the test's tmp dir."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.p = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._fh.close()
        return self.p.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_collector_config(d: Path, port: int, nodes: dict[str, str], **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "state_path": str(d / "collector-state.db"),
        "agents": {n: {"token_sha256": token_sha256(t)} for n, t in nodes.items()},
    }
    cfg.update(extra)
    p = d / "collector.yml"
    p.write_text(json.dumps(cfg))  # JSON is YAML
    return p


def write_agent_config(d: Path, node: str, token: str, collector_port: int, probes: dict[str, Any],
                       **extra: Any) -> Path:
    tok = d / f"{node}.token"
    tok.write_text(token)
    tok.chmod(0o600)
    cfg: dict[str, Any] = {
        "node": node,
        "site": "testfest",
        "collector": {
            "url": f"http://127.0.0.1:{collector_port}/api/v1/reports",
            "token_file": str(tok),
            "report_interval": 0.5,
            "backoff_max": 2,
        },
        "spool": {"path": str(d / f"{node}-spool.db")},
        "probes": probes,
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    p = d / f"{node}.yml"
    p.write_text(json.dumps(cfg))
    return p


def start_collector(d: Path, port: int, cfg: Path) -> Proc:
    p = Proc([str(BIN / "mogli-collector"), "run", "-c", str(cfg)], d / "collector.log")
    wait_until(lambda: not p.alive() or http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20,
               "collector /healthz")
    assert p.alive(), p.output()
    return p


def start_agent(d: Path, cfg: Path, name: str = "agent") -> Proc:
    return Proc([str(BIN / "mogli-agent"), "run", "-c", str(cfg)], d / f"{name}.log")


def scrape(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return body.decode()


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text exposition, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


class Prometheus:
    """A real Prometheus server (Debian package) with its own data dir and config."""

    def __init__(self, d: Path, scrape_targets: list[str], scrape_interval: str = "1s",
                 extra_args: list[str] | None = None, rule_files: list[str] | None = None,
                 alertmanager: str | None = None, extra_config: str = ""):
        binary = tool("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = d / "prometheus.yml"
        lines = [
            "global:",
            f"  scrape_interval: {scrape_interval}",
            f"  evaluation_interval: {scrape_interval}",
            "scrape_configs:",
            "  - job_name: mogli",
            "    honor_labels: true",
            "    static_configs:",
            f"      - targets: {json.dumps(scrape_targets)}",
        ]
        if rule_files:
            lines += ["rule_files:", *[f"  - {json.dumps(r)}" for r in rule_files]]
        if alertmanager:
            lines += ["alerting:", "  alertmanagers:", "    - static_configs:",
                      f"        - targets: [{json.dumps(alertmanager)}]"]
        cfg.write_text("\n".join(lines) + "\n" + extra_config)
        (d / "prom-data").mkdir(exist_ok=True)
        self.proc = Proc(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", *(extra_args or [])],
            d / "prometheus.log",
        )
        wait_until(lambda: not self.proc.alive() or http_get(f"{self.url}/-/ready")[0] == 200, 60,
                   "prometheus ready")
        assert self.proc.alive(), self.proc.output()

    def query(self, q: str) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def query_range(self, q: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        status, body = http_get(f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(params))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.stop()


def run_fleet(cfgs: list[Any], seconds: float, setup: Callable[[Any], None] | None = None) -> Any:
    """The agent's ICMP fleet (every IP-address ICMP probe, rounds started by the engine) for ``seconds``;
    returns its Recorder. ``setup(engine)`` runs first (e.g. opens the engine's sockets in a namespace)."""
    import asyncio
    import contextlib

    from agent.icmp.engine import get_engine
    from agent.recorder import Recorder
    from agent.runner import IcmpFleet

    async def main() -> Recorder:
        eng = get_engine()
        rec = Recorder()
        try:
            if setup is not None:
                setup(eng)
            task = asyncio.create_task(IcmpFleet(cfgs, rec).run())
            try:
                await asyncio.sleep(seconds)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            eng.close()
        return rec

    return asyncio.run(main())


def make_certs(d: Path) -> dict[str, Path]:
    """Self-signed server certificates from openssl for localhost and 127.0.0.1: ``short`` (30 days) and ``long``
    (40,000 days: after 2049, a GeneralizedTime), with their keys as ``short.key`` and ``long.key``."""
    out = {}
    for name, days in (("short", "30"), ("long", "40000")):
        key, crt = d / f"{name}.key", d / f"{name}.pem"
        subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(crt), "-days", days, "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        out[name], out[f"{name}.key"] = crt, key
    return out


def openssl_not_after(crt: Path) -> float:
    """The certificate's notAfter as openssl prints it, in seconds since the epoch."""
    r = subprocess.run([tool("openssl"), "x509", "-in", str(crt), "-noout", "-enddate"], check=True,
                       capture_output=True, text=True)
    text = r.stdout.strip().removeprefix("notAfter=")  # e.g. "Dec 27 05:20:11 2026 GMT"
    return float(calendar.timegm(time.strptime(text, "%b %d %H:%M:%S %Y %Z")))


def drained_values(rec: Any) -> dict[tuple[str, str], float]:
    """A Recorder's samples since the last drain, by (name, the phase or reason label, else "")."""
    out = {}
    for s in rec.drain():
        lb = dict(s.labels)
        assert isinstance(s.value, float)
        out[(s.name, lb.get("phase", lb.get("reason", "")))] = s.value
    return out
