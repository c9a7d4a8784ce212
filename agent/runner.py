"""The agent's asyncio side: probe scheduling, batching into the spool, sending.

The runner owns every probe's shared outcome (success, duration, timeout and the
failure ``reason``); probes only add their own values (agent/probes/base.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from agent import __version__, wire
from agent.catalog import METRICS
from agent.config import AgentConfig, probe_list
from agent.probes import PROBES
from agent.probes.base import ProbeResult, reason_of
from agent.recorder import Labels, Recorder
from agent.sender import Sender
from agent.spool import Spool

log = logging.getLogger("mogli.agent")


@dataclass
class Outcome:
    kind: str
    target: str
    ok: bool
    reason: str
    duration: float
    detail: dict[str, object] = field(default_factory=dict)


def target_label(pcfg: Any) -> str:
    return str(pcfg.name or pcfg.target)


WAKE_GRID = 0.05
"""Probe loops wake on multiples of this (at most interval/20): thousands of probes then share
a few dozen event-loop wakeups a second instead of one each (bench/icmp.py: 1000 ICMP targets
at 1 pps, 16 % -> 12 % of a core)."""


def on_grid(t: float, interval: float) -> float:
    """``t`` rounded up to the wake grid; the schedule itself (``due``) keeps its exact spacing."""
    g = min(WAKE_GRID, interval / 20)
    return math.ceil(t / g) * g


def spread_offset(kind: str, label: str, interval: float) -> float:
    """A stable start offset in [0, interval) so probes with one interval do not fire together."""
    return (zlib.crc32(f"{kind}/{label}".encode()) % 10_000) / 10_000 * interval


async def run_probe(kind: str, pcfg: Any, rec: Recorder | None = None) -> Outcome:
    """One run of one probe with its timeout; records into ``rec`` when given."""
    result = ProbeResult()
    ts = time.time()
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(PROBES[kind].run(pcfg, result), pcfg.timeout)
        ok, reason = True, ""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's wait_for can swallow a cancel that races the probe's completion;
            # re-raise it so a stopping agent stops now (seen as a 10 s SIGTERM hang in the demo)
            raise asyncio.CancelledError
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a failure is data: it becomes the reason label
        ok, reason = False, reason_of(e)
        result.detail.setdefault("error", str(e) or type(e).__name__)
        if reason == "error":
            log.warning("probe %s %s raised %r", kind, target_label(pcfg), e)
    duration = time.perf_counter() - t0
    label = target_label(pcfg)
    if rec is not None:
        record(rec, kind, label, ok, reason, duration, result, ts)
    return Outcome(kind, label, ok, reason, duration, result.detail)


def record(
    rec: Recorder, kind: str, label: str, ok: bool, reason: str, duration: float, result: ProbeResult, ts: float
) -> None:
    base: Labels = (("probe", kind), ("target", label))
    rec.gauge("mogli_probe_success", base, 1.0 if ok else 0.0, ts)
    rec.gauge("mogli_probe_duration_seconds", base, duration, ts)
    rec.inc("mogli_probe_runs_total", base, 1, ts)
    if not ok:
        rec.inc("mogli_probe_failures_total", tuple(sorted((*base, ("reason", reason)))), 1, ts)
    for name, extra, v in result.gauges:
        rec.gauge(name, _labels(name, base, extra), v, ts)
    for name, extra, v in result.counters:
        rec.inc(name, _labels(name, base, extra), v, ts)
    for name, extra, v in result.counter_values:
        rec.set_total(name, _labels(name, base, extra), v, ts)
    observed: dict[tuple[str, Labels], list[float]] = {}
    for name, extra, v in result.observations:  # one histogram sample per series and run
        observed.setdefault((name, extra), []).append(v)
    for (name, extra), values in observed.items():
        rec.observe_many(name, _labels(name, base, extra), values, ts)


def _labels(name: str, base: Labels, extra: Labels) -> Labels:
    """A probe's own values carry probe/target only where the catalog gives the metric those labels
    (mogli_icmp_* do; mogli_interface_*{interface} from the interfaces probe do not)."""
    if "target" in METRICS[name].labels:
        return tuple(sorted(base + extra))
    return extra


class Agent:
    def __init__(self, cfg: AgentConfig, token: str = ""):
        self.cfg = cfg
        self.rec = Recorder()
        self.spool = Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.max_age)
        saved = self.spool.totals()
        if saved:
            self.rec.load_totals(saved)
        self.agent_start = time.time()
        self.wakeup = asyncio.Event()
        self.sender = Sender(cfg.collector, self.spool, self.rec, self.wakeup, token)

    async def probe_loop(self, kind: str, pcfg: Any) -> None:
        loop = asyncio.get_running_loop()
        label = target_label(pcfg)
        await asyncio.sleep(spread_offset(kind, label, pcfg.interval))
        due = loop.time()
        while True:
            await run_probe(kind, pcfg, self.rec)
            due += pcfg.interval
            now = loop.time()
            if due < now:  # we fell behind (suspended laptop, overloaded router): skip, don't burst
                due = now + pcfg.interval - (now - due) % pcfg.interval
            await asyncio.sleep(on_grid(due, pcfg.interval) - now)

    def record_self(self, now: float) -> None:
        st = self.spool.stats()
        self.rec.gauge("mogli_agent_info", (("version", __version__),), 1, now)
        self.rec.gauge("mogli_agent_spool_batches", (), st.batches, now)
        self.rec.gauge("mogli_agent_spool_bytes", (), st.bytes, now)
        age = 0.0 if st.oldest_created is None else max(0.0, now - st.oldest_created)
        self.rec.gauge("mogli_agent_spool_oldest_age_seconds", (), age, now)
        dropped = st.dropped - self.rec.total("mogli_agent_spool_dropped_batches_total", ())
        self.rec.inc("mogli_agent_spool_dropped_batches_total", (), max(0.0, dropped), now)

    def cut_batch(self, now: float | None = None) -> int | None:
        """Move everything recorded so far into one spooled batch; returns its seq."""
        now = time.time() if now is None else now
        self.record_self(now)
        samples = self.rec.drain()
        if not samples:
            return None
        cfg = self.cfg

        def build(seq: int) -> bytes:
            return wire.encode(
                wire.Report(cfg.node, cfg.site, self.spool.stream, seq, self.agent_start, tuple(samples))
            )

        seq = self.spool.append(build, len(samples), self.rec.dump_totals(), now)
        self.wakeup.set()
        return seq

    async def batch_loop(self) -> None:
        interval = self.cfg.collector.report_interval
        while True:
            await asyncio.sleep(interval)
            self.cut_batch()

    async def run(self) -> None:
        probes = probe_list(self.cfg)
        log.info(
            "agent %s (site %s) starting: %d probes, collector %s, spool %s (stream %s)",
            self.cfg.node, self.cfg.site, len(probes), self.cfg.collector.url, self.cfg.spool.path,
            self.spool.stream,
        )
        tasks = [asyncio.create_task(self.probe_loop(k, p), name=f"probe {k} {target_label(p)}")
                 for k, p in probes]
        tasks.append(asyncio.create_task(self.batch_loop(), name="batcher"))
        tasks.append(asyncio.create_task(self.sender.run(), name="sender"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # a crashed loop is a bug: surface it and exit non-zero
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.cut_batch()  # keep what was measured since the last batch
            await self.sender.close()
            self.spool.close()

