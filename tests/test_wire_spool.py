"""The report format and the agent's spool."""

from __future__ import annotations

import gzip
import json
import math
import sqlite3
from pathlib import Path

import pytest

from agent import wire
from agent.recorder import Recorder
from agent.spool import Spool

T0 = 1_790_000_000.0


def _report(samples: tuple[wire.Sample, ...] = ()) -> wire.Report:
    return wire.Report("stiftsplatz", "maikerwe-2026", "0123456789abcdef", 7, T0, samples)


def test_round_trip_keeps_every_field() -> None:
    rec = Recorder()
    base = (("probe", "tcp"), ("target", "collector"))
    rec.gauge("mogli_probe_success", base, 1, T0 + 1)
    rec.inc("mogli_probe_runs_total", base, 1, T0 + 1)
    rec.inc("mogli_probe_runs_total", base, 1, T0 + 2)
    r = _report(tuple(rec.drain()))
    back = wire.parse(json.loads(wire.decompress(wire.encode(r), "gzip", 10**6)))
    assert back == r
    assert [s.value for s in back.samples] == [1.0, 1.0, 2.0]  # counters carry running totals


def test_histogram_value_round_trip() -> None:
    h = wire.Histogram(((0.001, 1.0), (0.01, 3.0), (math.inf, 4.0)), 0.5, 4.0)
    body = h.to_json()
    assert body["buckets"][-1] == ["+Inf", 4.0]
    assert wire._histogram(json.loads(json.dumps(body)), "v") == h


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda o: o.pop("seq"), "seq", "missing"),
        (lambda o: o.update(seq=0), "seq", ">= 1"),
        (lambda o: o.update(version=2), "version", "unsupported"),
        (lambda o: o.update(node="../etc"), "node", "does not match"),
        (lambda o: o.update(extra=1), "extra", "unknown field"),
        (lambda o: o["samples"][0].update(name="evil_metric"), "samples[0].name", "unknown metric"),
        (lambda o: o["samples"][0].update(type="counter"), "samples[0].type", "is a gauge"),
        (lambda o: o["samples"][0].update(value="1"), "samples[0].value", "expected a number"),
        (lambda o: o["samples"][0].update(value=float("nan")), "samples[0].value", "finite"),
        (lambda o: o["samples"][0]["labels"].update(node="x"), "samples[0].labels.node", "reserved"),
        (lambda o: o["samples"][0]["labels"].update(target="x" * 300), "samples[0].labels.target", "longer"),
        (lambda o: o["samples"][0]["labels"].pop("probe"), "samples[0].labels", "missing label"),
        (lambda o: o["samples"][0].update(ts=-5), "samples[0].ts", "out of range"),
    ],
)
def test_bad_fields_are_named(mutate, path: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    s = wire.Sample("mogli_probe_success", (("probe", "tcp"), ("target", "a")), 1.0, T0)
    obj = wire.report_body(_report((s,)))
    mutate(obj)
    with pytest.raises(wire.WireError) as e:
        wire.parse(obj)
    assert e.value.path == path and fragment in e.value.message


def test_gzip_bomb_and_broken_gzip_are_refused() -> None:
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    with pytest.raises(wire.WireError) as e:
        wire.decompress(bomb, "gzip", 1_000_000)
    assert e.value.status == 413
    with pytest.raises(wire.WireError, match="broken gzip"):
        wire.decompress(b"\x1f\x8bnot really", "gzip", 1000)
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decompress(gzip.compress(b"{}" * 100)[:20], "gzip", 1000)


def _append(sp: Spool, n: int, size: int = 10, now: float = T0) -> list[int]:
    return [sp.append(lambda seq: b"x" * size, 1, "{}", now + i) for i in range(n)]


def test_spool_sequence_survives_reopen_and_kill(tmp_path: Path) -> None:
    p = tmp_path / "spool.db"
    sp = Spool(p, 10**6, 10**6)
    assert _append(sp, 3) == [1, 2, 3]
    stream = sp.stream
    sp.delete(1)
    # no close(): as after kill -9, the WAL holds the committed transactions
    sp2 = Spool(p, 10**6, 10**6)
    assert sp2.stream == stream
    assert sp2.oldest() is not None and sp2.oldest().seq == 2  # type: ignore[union-attr]
    assert _append(sp2, 1) == [4]
    assert oct(p.stat().st_mode & 0o777) == "0o600"


def test_spool_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", max_bytes=100_000, max_age=3600)
    seqs = _append(sp, 30, size=10_000)
    st = sp.stats()
    assert st.bytes <= 100_000 and st.dropped == 30 - st.batches
    assert sp.oldest().seq == seqs[-st.batches]  # type: ignore[union-attr]
    # age bound: everything older than an hour goes when a new batch arrives
    sp.append(lambda seq: b"y", 1, "{}", T0 + 7200)
    assert sp.stats().batches == 1 and sp.stats().dropped == 30


def test_spool_keeps_totals_with_the_batch(tmp_path: Path) -> None:
    rec = Recorder()
    rec.inc("mogli_probe_runs_total", (("probe", "tcp"), ("target", "a")), 5, T0)
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)
    sp.append(lambda seq: b"b", 1, rec.dump_totals(), T0)
    rec2 = Recorder()
    rec2.load_totals(sp.totals() or "{}")
    assert rec2.total("mogli_probe_runs_total", (("probe", "tcp"), ("target", "a"))) == 5


def test_totals_of_series_the_catalog_no_longer_has_are_dropped_on_load() -> None:
    """An older agent's spool may hold series whose metric is gone or whose labels changed: they are
    dropped at start (they would only make the collector reject batches); the rest carry on."""
    saved = json.dumps({
        "counters": [["mogli_probe_runs_total", [["probe", "tcp"], ["target", "a"]], 5],
                     ["mogli_probe_runs_total", [["probe", "tcp"]], 7],
                     ["mogli_gone_total", [], 1]],
        "histograms": [["mogli_icmp_rtt_seconds", [["probe", "icmp"], ["target", "a"]], [0.1], [2, 1], 0.3],
                       ["mogli_icmp_rtt_seconds", [["target", "a"]], [0.1], [2, 1], 0.3]],
    })
    rec = Recorder()
    rec.load_totals(saved)
    rec.observe("mogli_icmp_rtt_seconds", (("probe", "icmp"), ("target", "a")), 0.05, T0)
    assert json.loads(rec.dump_totals()) == {
        "counters": [["mogli_probe_runs_total", [["probe", "tcp"], ["target", "a"]], 5.0]],
        "histograms": [["mogli_icmp_rtt_seconds", [["probe", "icmp"], ["target", "a"]], [0.1], [3, 1], 0.35]],
    }


def test_spool_is_a_plain_sqlite_wal_database(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 10**6, 10**6)
    _append(sp, 2)
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 2
