"""Spool and replay: write rate, replay throughput, draining a 10-minute backlog with live data on time."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from agent import wire
from agent.config import CollectorConfig
from agent.recorder import Recorder
from agent.runner import spread_offset
from agent.sender import Sender
from agent.spool import LOG_ROWS, Batch, Spool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, start_collector, write_collector_config

TARGETS, CAMERAS, PER_SERIES = 50, 20, 14  # ~1,000 samples per 5-second batch
INTERVAL = 5.0
BACKLOG_BATCHES = int(600 / INTERVAL)  # 10 minutes


def _batch_samples(ts: float) -> tuple[wire.Sample, ...]:
    out = []
    for t in range(TARGETS + CAMERAS):
        for k in range(PER_SERIES):
            out.append(wire.Sample("mogli_probe_success", (("probe", "icmp"), ("target", f"t{t}-{k}")), 1.0, ts))
    return tuple(out)


def _fill(spool: Spool, n: int, start: float, stream_node: str = "bench") -> None:
    for i in range(n):
        ts = start + i * INTERVAL
        samples = _batch_samples(ts)
        spool.append(lambda seq, s=samples, ts=ts: wire.encode(
            wire.Report(stream_node, "bench", spool.stream, seq, start, s)), len(samples), (), ts)


def write_rate() -> dict[str, Any]:
    rates = []
    with TemporaryDirectory() as d:
        for run in range(3):
            sp = Spool(Path(d) / f"s{run}.db", 10**10, 10**9)
            t0 = time.perf_counter()
            _fill(sp, 100, time.time())
            rates.append(100 / (time.perf_counter() - t0))
            sp.close()
    r = statistics.median(rates)
    return {"benchmark": "spool write (encode + gzip + SQLite WAL commit)", "ours": r * len(_batch_samples(0)),
            "anchor": None, "anchor_name": None, "unit": "samples/s", "better": "higher",
            "notes": f"{r:.0f} batches/s of {len(_batch_samples(0))} samples; median of 3 x 100 batches"}


def _old_append(db: sqlite3.Connection, body: bytes, rows: list[tuple[str, str]], now: float) -> None:
    """The anchor: Spool.append before the totals journal (WAL, synchronous=NORMAL like Spool), every
    changed row written into the totals table in the batch's transaction."""
    db.execute("BEGIN IMMEDIATE")
    seq = int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0])
    db.execute("INSERT INTO batches(seq, created, samples, body) VALUES (?,?,?,?)", (seq, now, 1, body))
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (str(seq + 1),))
    db.executemany("INSERT OR REPLACE INTO totals(labels, value) VALUES (?, ?)", rows)
    db.execute("DELETE FROM batches WHERE created < ?", (now - 10**9,))
    db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM batches").fetchone()
    db.execute("COMMIT")


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


TOTALS_BATCHES = 60


def _totals_run(d: Path, n: int, design: str) -> tuple[float, float]:
    """(bytes written, CPU seconds) per batch for ``n`` ICMP targets at 10 s rounds and 2 s batches:
    the targets whose round ended in a batch's 2 seconds (agent.runner.spread_offset starts them)
    change with it, a fifth. Five batches first give every target its row; then TOTALS_BATCHES."""
    targets = [f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(n)]
    by_phase: list[list[tuple[tuple[str, str], ...]]] = [[] for _ in range(5)]
    for t in targets:
        by_phase[int(spread_offset("icmp", t, 10.0) // 2)].append((("probe", "icmp"), ("target", t)))
    sp = Spool(d / f"{design}-{n}.db", 10**10, 10**9)
    rec = Recorder(encoded=True)
    counters = [("mogli_icmp_sent_total", 3.0), ("mogli_icmp_received_total", 3.0),
                ("mogli_icmp_duplicates_total", 0.0), ("mogli_probe_runs_total", 1.0)]
    written = cpu = 0.0
    for b in range(5 + TOTALS_BATCHES):
        ts = 1_790_000_000.0 + 2 * b
        for i, labels in enumerate(by_phase[b % 5]):
            rtts = [0.0004 + 0.0003 * ((i * 7 + b * 3 + k) % 40) for k in range(3)]
            rec.values(labels, ts, [], counters, [("mogli_icmp_rtt_seconds", rtts)])
        rec.drain_groups()
        rows = rec.changed_totals()
        w0, c0 = _write_bytes(), time.process_time()
        if design == "ours":
            sp.append(lambda seq: b"batch", 1, rows, ts)
        else:
            _old_append(sp.db, b"batch", rows, ts)
        rec.totals_saved()
        if b >= 5:
            written += _write_bytes() - w0
            cpu += time.process_time() - c0
    sp.close()
    return written / TOTALS_BATCHES, cpu / TOTALS_BATCHES


def totals_rows() -> list[dict[str, Any]]:
    out = []
    for n in (1_000, 10_000):
        runs: dict[str, list[tuple[float, float]]] = {"ours": [], "anchor": []}
        with TemporaryDirectory(dir=Path(__file__).resolve().parent) as d:  # a disk, as on the router (not tmpfs)
            for _ in range(3):
                for design in runs:
                    runs[design].append(_totals_run(Path(d), n, design))
                    for f in Path(d).iterdir():
                        f.unlink()
        (wo, co), (wa, ca) = ([statistics.median(r[k] for r in runs[x]) for k in (0, 1)] for x in ("ours", "anchor"))
        anchor = "one table row per changed label set every batch (the previous design)"
        notes = (f"ICMP targets at 10 s rounds, 2 s batches: ~{n // 5:,} label sets change per batch; "
                 f"write_bytes of /proc/self/io over {TOTALS_BATCHES} batches, checkpoints included, median of 3; "
                 "the batch body itself is 5 bytes here (the same for both)")
        out += [
            {"benchmark": f"spool bytes written per batch (totals of {n:,} label sets)", "ours": wo, "anchor": wa,
             "anchor_name": anchor, "unit": "bytes", "better": "lower",
             "notes": f"{notes}; {wo * 43200 / 1e9:.2f} vs {wa * 43200 / 1e9:.2f} GB a day"},
            {"benchmark": f"spool CPU per batch (totals of {n:,} label sets)", "ours": co, "anchor": ca,
             "anchor_name": anchor, "unit": "s", "better": "lower",
             "notes": "process time of Spool.append (journal row: join + zlib level 1 + insert; every "
                      f"{LOG_ROWS} rows the fold into the table) vs the previous append; {notes}"},
        ]
    return out


class OldestFirst(Sender):
    """The naive design for comparison: strictly oldest first, no replay limit."""

    def pick(self, now: float) -> tuple[Batch | None, bool]:
        return self.spool.oldest(), True


async def _drain(port: int, token: str, d: Path, cls: type[Sender], name: str) -> dict[str, float]:
    spool = Spool(d / f"{name}.db", 10**10, 10**9)
    now = time.time()
    _fill(spool, BACKLOG_BATCHES, now - BACKLOG_BATCHES * INTERVAL, name)
    tok = d / "tok"
    tok.write_text(token)
    cfg = CollectorConfig(url=f"http://127.0.0.1:{port}/api/v1/reports", report_interval=1.0)
    wake = asyncio.Event()
    sender = cls(cfg, spool, Recorder(), wake, token)
    acked: dict[int, float] = {}
    orig_delete = spool.delete

    def delete(seq: int) -> None:
        acked[seq] = time.time()
        orig_delete(seq)

    spool.delete = delete  # type: ignore[method-assign]
    live: dict[int, float] = {}
    task = asyncio.create_task(sender.run())
    t0 = time.time()
    backlog = set(range(1, BACKLOG_BATCHES + 1))
    while not backlog <= set(acked) or any(s not in acked for s in live):
        samples = _batch_samples(time.time())
        seq = spool.append(lambda s, smp=samples: wire.encode(
            wire.Report(name, "bench", spool.stream, s, now, smp)), len(samples), (), time.time())
        live[seq] = time.time()
        wake.set()
        await asyncio.sleep(1.0)  # live batches every second (report_interval 1 s in this run)
        if time.time() - t0 > 300:
            raise RuntimeError("drain took longer than 5 minutes")
    drain = max(acked[s] for s in backlog) - t0
    task.cancel()
    await sender.close()
    delays = [acked[s] - live[s] for s in live if s in acked]
    return {"drain_s": drain, "live_p50": statistics.median(delays), "live_max": max(delays),
            "samples_per_s": BACKLOG_BATCHES * len(_batch_samples(0)) / drain}


def drain_rows() -> list[dict[str, Any]]:
    with TemporaryDirectory() as d:
        dp = Path(d)
        port = free_port()
        token = "bench-token-0123456789abcdef"
        nodes = {f"ours{i}": token + f"-o{i}" for i in range(3)} | {f"naive{i}": token + f"-n{i}" for i in range(3)}
        col = start_collector(dp, port, write_collector_config(
            dp, port, nodes, rate_limit={"per_second": 10000, "burst": 10000}))
        try:
            ours = [asyncio.run(_drain(port, nodes[f"ours{i}"], dp, Sender, f"ours{i}")) for i in range(3)]
            naive = [asyncio.run(_drain(port, nodes[f"naive{i}"], dp, OldestFirst, f"naive{i}")) for i in range(3)]
        finally:
            col.stop()

    def med(rs: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rs)

    n = BACKLOG_BATCHES * len(_batch_samples(0))
    return [
        {"benchmark": "drain a 10-minute backlog (50 targets + 20 cameras)", "ours": med(ours, "drain_s"),
         "anchor": med(naive, "drain_s"), "anchor_name": "oldest first, no replay limit", "unit": "s",
         "better": "lower", "notes": f"{BACKLOG_BATCHES} batches, {n:,} samples; ours replays at most 20 "
                                     "batches/s (replay_rate) so it is slower by design"},
        {"benchmark": "replay throughput", "ours": med(ours, "samples_per_s"), "anchor": med(naive, "samples_per_s"),
         "anchor_name": "oldest first, no replay limit", "unit": "samples/s", "better": "higher",
         "notes": "to a real collector on loopback (fsync per acknowledged batch)"},
        {"benchmark": "live batch delay while the backlog drains (max)", "ours": med(ours, "live_max"),
         "anchor": med(naive, "live_max"), "anchor_name": "oldest first, no replay limit", "unit": "s",
         "better": "lower", "notes": f"p50 ours {med(ours, 'live_p50'):.2f} s vs {med(naive, 'live_p50'):.2f} s; "
                                     "a live batch is cut every second during the drain"},
    ]


def run() -> list[dict[str, Any]]:
    return [write_rate(), *totals_rows(), *drain_rows()]


if __name__ == "__main__":
    for row in run():
        print(row)
