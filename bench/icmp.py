"""ICMP: CPU share of one core for N loopback targets at 1 packet per second each, next to fping.

Ours: the whole agent (`mogli-agent run`, the process an operator runs) with N ICMP probes, rounds of 10
packets 1 s apart, reporting every 2 s (the default) to a real collector: probing, recording, batching,
spooling to SQLite and sending all count. Its CPU time (user + system, /proc) over a 30 s window after every
target's rounds are running (``WINDOW``). The collector runs on the other CPU and is not counted. Anchor: fping on the
same targets in the same run, `fping -c 10 -p 1000 -i <1000/N ms>` (1 packet per second per target), its
CPU time over its run time (from rusage of the finished child). Targets are 127.1.x.y (all of 127/8 is
loopback), so the kernel answers every request: any loss the collector shows is false loss. Both run pinned
to the same CPU (see ``CPU``), three times each, alternating; the figures are medians.

Ours runs on each kind of ICMP socket (``PLAN``): a datagram socket, as a router deployed with the Ansible
role runs (the bench lets its group into net.ipv4.ping_group_range for the run, and checks in /proc which
kind the agent opened), and at 10,000 targets also a raw one. fping, run as root, opens a raw socket.

Run: python -m bench.icmp   (as root: sets ping_group_range; needs fping)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import (  # noqa: E402
    free_port,
    http_get,
    start_agent,
    start_collector,
    wait_until,
    write_agent_config,
    write_collector_config,
)

from agent import hugepages  # noqa: E402
from agent.icmp.engine import ENV_SOCKET  # noqa: E402


def targets(n: int) -> list[str]:
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


SETTLE, WINDOW, FIRST = 5.0, 30.0, 10.0
"""The window starts SETTLE seconds after the collector shows every target (each has finished a round: agent
start ~2 s at 10,000 probes, spread start < 10 s, a round 9.5 s), so it sees the steady state, batches and all.
It lasts three rounds of every target, so the agent's periodic work (a garbage-collector pass every 30 s, the
huge-page pass at 10,000 targets, 15 batches) counts in proportion. Runs until f26ab0c used a 10 s window; the
share over the window's FIRST 10 s is still reported beside it, for comparison: a pass of 40-170 ms that falls
into 10 s moves them by up to 1.7 points."""
PLAN = [(1000, 3, "dgram"), (10_000, 3, "dgram"), (10_000, 3, "raw")]  # (targets, repetitions, socket kind)
"""dgram: what a router deployed with the Ansible role runs (it lets the agent's group into
net.ipv4.ping_group_range, so ``socket: auto`` opens a datagram ICMP socket); raw: without that sysctl
(CAP_NET_RAW), as these figures were measured before the role set it."""
PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")
CPU = max(os.sched_getaffinity(0))
"""Ours and fping run pinned to this one CPU: a process moved between cores restarts with cold caches,
which on this 2-core VM moved the same run's figure by up to a third (10,000 targets: 30-41 % unpinned,
26-33 % pinned; fping 16 % / 15 %)."""
REPORT_INTERVAL = 2.0  # the agent's default collector.report_interval


def _pin() -> None:
    os.sched_setaffinity(0, {CPU})


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _sums(port: int) -> tuple[float, float, int]:
    """(sent, received, series) of mogli_icmp_*_total as the collector exports them."""
    sent = got = 0.0
    series = 0
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=60)  # 130,000 series at 10,000 targets
    if status != 200:
        raise RuntimeError(f"collector /metrics: {status}")
    for line in body.decode().splitlines():
        if line.startswith("mogli_icmp_sent_total{"):
            sent += float(line.rsplit(" ", 1)[1])
            series += 1
        elif line.startswith("mogli_icmp_received_total{"):
            got += float(line.rsplit(" ", 1)[1])
    return sent, got, series


def _socket_kind(pid: int) -> str:
    """The kind of ICMP socket the process has open: dgram (listed in /proc/net/icmp, icmp6) or raw."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    for kind, tables in (("dgram", ("icmp", "icmp6")), ("raw", ("raw", "raw6"))):
        for table in tables:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            if any(r.split()[9] in inodes for r in rows):
                return kind
    return "none"


@contextlib.contextmanager
def _ping_group(gid: int) -> Iterator[None]:
    """net.ipv4.ping_group_range taking in ``gid`` while the benchmark runs, as the Ansible role sets it on a
    router (docs/deploy.md); put back afterwards."""
    before = PING_GROUP_RANGE.read_text()
    PING_GROUP_RANGE.write_text(f"{gid} {gid}\n")
    try:
        yield
    finally:
        PING_GROUP_RANGE.write_text(before.replace("\t", " "))


def ours(n: int, kind: str = "dgram") -> dict[str, Any]:
    os.environ[ENV_SOCKET] = kind  # the agent inherits it: probes with socket: auto open this kind
    os.environ[hugepages.ENV] = "auto"  # as deployed: the agent chooses
    try:
        return _ours(n, kind)
    finally:
        del os.environ[ENV_SOCKET], os.environ[hugepages.ENV]


def _ours(n: int, kind: str) -> dict[str, Any]:
    with TemporaryDirectory() as tmp:
        d = Path(tmp)
        port, token = free_port(), "bench-icmp-0123456789abcdef0123"
        col = start_collector(d, port, write_collector_config(d, port, {"bench": token}))
        others = os.sched_getaffinity(0) - {CPU}
        if others:
            os.sched_setaffinity(col.p.pid, others)
        probes = {"icmp": [{"target": t, "interval": 10, "count": 10, "packet_interval": 1.0, "reply_timeout": 0.5,
                            "timeout": 9.9} for t in targets(n)]}
        cfg = write_agent_config(d, "bench", token, port, probes, collector={"report_interval": REPORT_INTERVAL})
        agent = start_agent(d, cfg, "bench")
        try:
            os.sched_setaffinity(agent.p.pid, {CPU})
            wait_until(lambda: not agent.alive() or _sums(port)[2] == n, 120, f"all {n} targets at the collector", 2)
            time.sleep(SETTLE)
            if _socket_kind(agent.p.pid) != kind:
                raise RuntimeError(f"the agent has no {kind} ICMP socket open (found: {_socket_kind(agent.p.pid)})")
            t0 = time.monotonic()  # the collector's counters are read when the scrape starts, not when it ends
            s0, _, _ = _sums(port)
            c0, w0, e0 = _cpu_seconds(agent.p.pid), time.monotonic(), _echo_requests()
            time.sleep(FIRST)
            cf, wf = _cpu_seconds(agent.p.pid), time.monotonic()
            time.sleep(WINDOW - FIRST)
            c1, w1, e1 = _cpu_seconds(agent.p.pid), time.monotonic(), _echo_requests()
            time.sleep(REPORT_INTERVAL + 1)  # the last batch of the window reaches the collector
            t1 = time.monotonic()
            s1, r1, series = _sums(port)
            if not agent.alive() or series != n:
                raise RuntimeError(f"the agent reported {series} of {n} targets:\n{agent.output()[-3000:]}")
        finally:
            agent.stop()
            col.stop()
    return {"targets": n, "kind": kind, "cpu_share": (c1 - c0) / (w1 - w0), "cpu_share_first": (cf - c0) / (wf - w0),
            "sent": s1, "received": r1, "loss_ratio": 1 - r1 / s1 if s1 else 1.0,
            "pps": (e1 - e0) / (w1 - w0),  # what the kernel sent in the window
            "pps_collector": (s1 - s0) / (t1 - t0)}  # as the collector counted it (in whole rounds)


def _echo_requests() -> int:
    """ICMP echo requests this host has sent (/proc/net/snmp OutEchos; during the run only the agent pings)."""
    head, values = (line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                    if line.startswith("Icmp:"))
    return int(values[head.index("OutEchos")])


def fping(n: int) -> dict[str, float]:
    exe = shutil.which("fping") or "/usr/bin/fping"
    interval_ms = 1000 / n
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run([exe, "-c", "10", "-p", "1000", "-i", f"{interval_ms:g}", "-q", *targets(n)],
                       capture_output=True, text=True, timeout=300, preexec_fn=_pin)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sent = received = 0
    for line in p.stderr.splitlines():  # "127.1.0.1 : xmt/rcv/%loss = 10/10/0%, min/avg/max = ..."
        if "xmt/rcv/%loss" in line:
            xmt, rcv = line.split("=")[1].split("/")[:2]
            sent, received = sent + int(xmt), received + int(rcv)
    return {"cpu_share": cpu / wall, "wall": wall, "sent": sent, "received": received,
            "loss_ratio": 1 - received / sent if sent else 1.0}


def _shares(runs: list[dict[str, float]], key: str = "cpu_share") -> str:
    return ", ".join(f"{100 * r[key]:.1f}" for r in runs)


def run() -> list[dict[str, Any]]:
    with _ping_group(os.getgid()):
        return _run()


def _run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, reps, kind in PLAN:
        o: list[dict[str, Any]] = []
        f: list[dict[str, float]] = []
        for _ in range(reps):  # alternating: a slow spell of the VM hits both sides alike
            o.append(ours(n, kind))
            f.append(fping(n))
        how = f"median of {reps} runs each, alternating, both pinned to CPU {CPU}"
        sock = ("datagram ICMP socket (ping_group_range set, as the Ansible role sets it)" if kind == "dgram"
                else "raw ICMP socket (no ping_group_range: CAP_NET_RAW)")
        rows.append({
            "benchmark": f"icmp: {n} loopback targets at 1 pps each, {kind} socket, CPU share of one core",
            "ours": round(100 * statistics.median(r["cpu_share"] for r in o), 2),
            "anchor": round(100 * statistics.median(r["cpu_share"] for r in f), 2),
            "anchor_name": "fping 5.1 (-c 10 -p 1000, raw socket)",
            "unit": "% of one core",
            "better": "lower",
            "notes": f"{how}; ours: the whole agent process on a {sock} (probing, recording, batches every "
                     f"{REPORT_INTERVAL:g} s into the spool and to a collector; huge pages for its heap "
                     f"{'on' if hugepages.wanted(n, 'auto') else 'off'}, its own choice from "
                     f"{hugepages.MIN_TARGETS} targets on), {WINDOW:g} s window {SETTLE:g} s after every target "
                     f"reached the collector, single runs {_shares(o)} % (over the window's first {FIRST:g} s, as "
                     f"runs until f26ab0c measured: {_shares(o, 'cpu_share_first')} %), "
                     f"~{statistics.median(r['pps'] for r in o):.0f} packets/s (nominal {n}); fping: whole run "
                     f"incl. start, {statistics.median(r['wall'] for r in f):.1f} s for 10 packets per target, "
                     f"single runs {_shares(f)} %; "
                     f"goal {'5' if n <= 1000 else '30'} %; {os.cpu_count()} cores",
        })
        rows.append({
            "benchmark": f"icmp: {n} loopback targets at 1 pps each, {kind} socket, loss reported (all were answered)",
            "ours": round(statistics.median(r["loss_ratio"] for r in o), 5),
            "anchor": round(statistics.median(r["loss_ratio"] for r in f), 5),
            "anchor_name": "fping 5.1 (-c 10 -p 1000, raw socket)",
            "unit": "loss ratio",
            "better": "lower",
            "notes": f"{how}; ours: mogli_icmp_received_total / mogli_icmp_sent_total summed over every target "
                     f"at the collector after the window ({int(statistics.median(r['sent'] for r in o))} packets)",
        })
        rows.append({
            "benchmark": f"icmp: {n} loopback targets at 1 pps each, {kind} socket, CPU time per packet sent",
            "ours": round(statistics.median(1e6 * r["cpu_share"] / r["pps"] for r in o), 2),
            "anchor": round(statistics.median(1e6 * r["cpu_share"] * r["wall"] / r["sent"] for r in f), 2),
            "anchor_name": "fping 5.1 (-c 10 -p 1000, raw socket)",
            "unit": "µs",
            "better": "lower",
            "notes": f"the same runs: CPU share over packets a second; ours at "
                     f"~{statistics.median(r['pps'] for r in o):.0f} packets/s (echo requests the kernel sent in "
                     f"the window, /proc/net/snmp; the collector counted "
                     f"~{statistics.median(r['pps_collector'] for r in o):.0f}, in whole rounds), fping at "
                     f"~{statistics.median(r['sent'] / r['wall'] for r in f):.0f} (packets "
                     f"sent over its whole run: at 10,000 targets it falls behind its nominal {n}/s)",
        })
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
