"""The agent's asyncio side: probe scheduling, batching into the spool, sending.

The runner owns every probe's shared outcome (success, duration, timeout and the
failure ``reason``); probes only add their own values (agent/probes/base.py).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, cast

from agent import __version__, hugepages, wire
from agent.catalog import METRICS
from agent.config import AgentConfig, probe_list
from agent.icmp.engine import Round, get_engine
from agent.probes import PROBES, icmp
from agent.probes.base import Permission, ProbeError, ProbeResult, reason_of
from agent.probes.icmp import IcmpConfig
from agent.recorder import Labels, Prepared, Recorder
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
    gauges: list[tuple[str, float]] = []  # the probe/target series' own values go to the recorder in one call
    counters: list[tuple[str, float]] = []
    for name, extra, v in result.gauges:
        if extra or name not in _TARGETED:
            rec.gauge(name, _labels(name, base, extra), v, ts)
        else:
            gauges.append((name, v))
    for name, extra, v in result.counters:
        if extra or name not in _TARGETED:
            rec.inc(name, _labels(name, base, extra), v, ts)
        else:
            counters.append((name, v))
    observed: dict[tuple[str, Labels], list[float]] = {}
    for name, extra, values in result.observations:  # one histogram sample per series and run
        observed.setdefault((name, extra), []).extend(values)
    own: list[tuple[str, list[float]]] = []
    for (name, extra), values in observed.items():
        if extra or name not in _TARGETED:
            rec.observe_many(name, _labels(name, base, extra), values, ts)
        else:
            own.append((name, values))
    record_outcome(rec, base, ok, reason, duration, ts, gauges, counters, own)
    for name, extra, v in result.counter_values:
        rec.set_total(name, _labels(name, base, extra), v, ts)


OUTCOME_GAUGES = ("mogli_probe_success", "mogli_probe_duration_seconds")
OUTCOME_COUNTERS = ("mogli_probe_runs_total",)
"""What :func:`record_outcome` adds to a run's own gauges and counters, in order (the ICMP fleet's
Recorder.prepare names the same)."""


def record_outcome(rec: Recorder, base: Labels, ok: bool, reason: str, duration: float, ts: float,
                   gauges: list[tuple[str, float]], counters: list[tuple[str, float]],
                   observed: list[tuple[str, list[float]]]) -> None:
    """What every probe run records (success, duration, runs, failures by reason) with the run's own
    gauges, counter increments and observations on its probe/target series: one report group."""
    gauges += zip(OUTCOME_GAUGES, (1.0 if ok else 0.0, duration), strict=True)
    counters += zip(OUTCOME_COUNTERS, (1.0,), strict=True)
    rec.values(base, ts, gauges, counters, observed)
    if not ok:
        record_failure(rec, base, reason, ts)


def record_failure(rec: Recorder, base: Labels, reason: str, ts: float) -> None:
    """A failed run, counted by reason on its probe/target series."""
    rec.inc("mogli_probe_failures_total", (base[0], ("reason", reason), *base[1:]), 1, ts)


_TARGETED = frozenset(name for name, m in METRICS.items() if "target" in m.labels)


def _labels(name: str, base: Labels, extra: Labels) -> Labels:
    """A probe's own values carry probe/target only where the catalog gives the metric those labels
    (mogli_icmp_* do; mogli_interface_*{interface} from the interfaces probe do not)."""
    if name in _TARGETED:
        return tuple(sorted(base + extra))
    return extra


GC_INTERVAL = 30.0
"""Seconds between the agent's garbage-collector passes (see :func:`gc_loop`)."""
GC_FULL_EVERY = 10
"""Every this many passes, one over every object (the others skip what survived earlier passes)."""


async def gc_loop(interval: float = GC_INTERVAL, full_every: int = GC_FULL_EVERY) -> None:
    """The agent's garbage collection: one pass every ``interval`` instead of the automatic ones.

    The agent allocates many short-lived containers (samples, histogram snapshots, round results)
    but hardly any reference cycles (reference counting frees the rest at once): at 10,000 ICMP
    targets the automatic passes ran ~12 % of a core with the default threshold and still ~1.4 %
    with a raised one, collecting nothing (bench/icmp.py). What survives a pass (the probes' rounds,
    the recorder's series) is frozen out of the next ones; every ``full_every`` passes they are
    unfrozen and looked at again, so a cycle among them lives at most that long. Cycles among new
    objects (an exception's traceback, aiohttp internals) live at most ``interval`` seconds."""
    gc.freeze()
    gc.disable()
    passes = 0
    try:
        while True:
            await asyncio.sleep(interval)
            passes += 1
            if passes % full_every == 0:
                gc.unfreeze()
            gc.collect()
            gc.freeze()
    finally:
        gc.unfreeze()
        gc.enable()


async def huge_pages_loop(first: float, every: float = GC_INTERVAL) -> None:
    """Ask for huge pages for the heap (agent/hugepages.py) after ``first`` seconds, then every ``every``
    seconds for what the heap has grown by, until the kernel refuses."""
    hp = hugepages.HugePages()
    await asyncio.sleep(first)
    while hp.active:
        t = time.monotonic()
        if n := await asyncio.to_thread(hp.advise):  # a collapse copies megabytes: not on the loop's time
            log.info("huge pages: %d MiB more of the heap (%.0f ms; %d MiB in all)", n >> 20,
                     (time.monotonic() - t) * 1e3, hp.bytes >> 20)
        await asyncio.sleep(every)


class IcmpFleet:
    """Every ICMP probe with an IP-address target, scheduled by the ICMP engine without a task each.

    The general path (a task per probe: sleep, run under wait_for, record) costs an asyncio task,
    two timers and a future per round; at 1,000 targets that was half the agent's CPU
    (bench/icmp.py). Here the engine starts each next round itself at the probe's next due time and
    calls back when it ends; the callback records what run_probe records (the same
    icmp.round_values, icmp.check_round and :func:`record_outcome`) without a ProbeResult in between. Same schedule as
    :meth:`Agent.probe_loop`: a spread start, fixed spacing, skipped rounds when behind. A round
    cannot outlive its timeout: its last request leaves (count - 1) * packet_interval after its
    start and is given up reply_timeout later, which config validation keeps below the timeout.
    Host-name targets (resolved every round) stay on the general path.
    """

    def __init__(self, cfgs: list[IcmpConfig], rec: Recorder):
        self.cfgs = cfgs
        self.rec = rec
        self.rounds: dict[int, Round] = {}  # index in cfgs -> its round in flight or waiting to start
        self.addresses = [icmp.literal(c.target, c.family) for c in cfgs]
        self.labels: list[Labels] = [(("probe", "icmp"), ("target", target_label(c))) for c in cfgs]
        self.prepared: list[Prepared | None] = [None] * len(cfgs)  # each probe's round group, made at its first end

    @staticmethod
    def takes(pcfg: Any) -> bool:
        """Whether the fleet runs this probe (an ICMP probe whose target is an IP address)."""
        if not isinstance(pcfg, IcmpConfig):
            return False
        try:
            return icmp.literal(pcfg.target, pcfg.family) is not None
        except ProbeError:  # an address of the other family: the general path reports it each round
            return False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine = get_engine()
        now = loop.time()
        starts = [(now + spread_offset("icmp", target_label(c), c.interval), i) for i, c in enumerate(self.cfgs)]
        # made in the order their packets go out (by start within a packet interval): each round's objects are
        # then allocated next to those of the rounds sent just before and after it, so a tick's sends and their
        # replies walk memory mostly in order rather than all over the heap (10,000 targets: ~25 MB of rounds)
        starts.sort(key=lambda t: (t[0] % self.cfgs[t[1]].packet_interval, t[1]))
        for due, i in starts:
            self.cfgs[i] = copy.copy(self.cfgs[i])  # what each round's end reads, in that order too
            self._launch(i, due)
        try:
            await loop.create_future()  # rounds run from the engine's timer until we are cancelled
        finally:
            for rnd in list(self.rounds.values()):
                self.engine.cancel(rnd)
            self.rounds.clear()

    def _launch(self, i: int, due: float) -> None:
        c = self.cfgs[i]
        fam, addr = self.addresses[i]  # type: ignore[misc]
        try:
            self.rounds[i] = self.engine.start(
                addr, fam, count=c.count, packet_interval=c.packet_interval, reply_timeout=c.reply_timeout,
                size=c.size, tos=c.dscp << 2, df=c.dont_fragment, kind=c.socket, at=due, on_done=self._done, tag=i)
        except OSError as e:  # no ICMP socket may be opened (permission) or the family is off
            err: Exception = Permission(str(e.strerror or e)) if isinstance(e, PermissionError) else e
            record(self.rec, "icmp", target_label(c), False, reason_of(err), 0.0, ProbeResult(), time.time())
            nxt = self._next(c, due)
            self.engine.loop.call_at(nxt, self._launch, i, nxt)

    def _next(self, c: IcmpConfig, due: float) -> float:
        now = self.engine.loop.time()
        due += c.interval
        if due < now:  # fell behind: skip, don't burst
            due = now + c.interval - (now - due) % c.interval
        return due

    def _done(self, rnd: Round) -> None:
        i, due = rnd.tag, rnd.at
        c, base = self.cfgs[i], self.labels[i]
        duration = max(0.0, self.engine.loop.time() - due)
        ts = time.time() - duration
        # every request answered (the usual round): its RTTs hold no None
        got = cast(list[float], rnd.rtts) if rnd.answered == rnd.sent == rnd.count else rnd.valid_rtts()
        st = icmp.stats_of(got, rnd.sent, rnd.duplicates)
        ok, reason = True, ""
        if not st.received:
            try:
                icmp.check_round(rnd, st, c)
            except Exception as e:
                ok, reason = False, reason_of(e)
        # what record_outcome(icmp.round_values(st)) records, as one prepared group (no name checks, no lists)
        prep = self.prepared[i]
        if prep is None:
            prep = self.prepared[i] = self.rec.prepare(base, (*icmp.ROUND_GAUGES, *OUTCOME_GAUGES),
                                                       (*icmp.ROUND_COUNTERS, *OUTCOME_COUNTERS), icmp.RTT_HISTOGRAM,
                                                       icmp.NANO_VALUES)
        gauges: list[float | None] = [*st[3:], 1.0 if ok else 0.0, duration]
        if not st.sent:
            gauges[0] = None  # no loss ratio without a request
        prep.record(ts, gauges, (float(st.sent), float(st.received), float(st.duplicates), 1.0), got)
        if not ok:
            record_failure(self.rec, base, reason, ts)
        if rnd.group.sock.fileno() >= 0:  # the engine is still open: the same round again
            self.engine.again(rnd, self._next(c, due))  # self.rounds[i] is this Round already


class Agent:
    def __init__(self, cfg: AgentConfig, token: str = ""):
        self.cfg = cfg
        self.rec = Recorder(encoded=True)
        self.spool = Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.max_age)
        legacy = self.spool.legacy_totals()
        if legacy:
            self.rec.load_legacy_totals(legacy)
        for key, why in self.rec.load_totals(self.spool.totals()):
            log.error("%s: saved totals of %s cannot be read (%s): skipped, those series start again from 0",
                      cfg.spool.path, key[:200], why)
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
        groups, count = self.rec.drain_groups()
        if not count:
            return None
        cfg = self.cfg

        def build(seq: int) -> bytes:
            report = wire.Report(cfg.node, cfg.site, self.spool.stream, seq, self.agent_start)
            return wire.encode_groups(report, groups)

        seq = self.spool.append(build, count, self.rec.changed_totals(), now)
        self.rec.totals_saved()
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
        fleet = [p for _, p in probes if IcmpFleet.takes(p)]
        tasks = [asyncio.create_task(self.probe_loop(k, p), name=f"probe {k} {target_label(p)}")
                 for k, p in probes if not IcmpFleet.takes(p)]
        if fleet:
            tasks.append(asyncio.create_task(IcmpFleet(fleet, self.rec).run(), name=f"icmp fleet ({len(fleet)})"))
        tasks.append(asyncio.create_task(self.batch_loop(), name="batcher"))
        tasks.append(asyncio.create_task(gc_loop(), name="gc"))
        if hugepages.wanted(len(fleet)):  # the first pass once every target has its round and series
            first = min(60.0, max((c.interval for c in fleet), default=0.0) + 2.0)
            tasks.append(asyncio.create_task(huge_pages_loop(first), name="huge pages"))
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

